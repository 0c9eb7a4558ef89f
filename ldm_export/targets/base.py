"""The interface every compile target implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


class Target(ABC):
    name: str
    backend: str  # the ldm_runtime backend that runs what this target produces

    @abstractmethod
    def compile(self, staging: Path, component: str, onnx_files: list[str]) -> list[str]:
        """Turn an exported ONNX component (files relative to ``staging``) into this target's
        files; returns the files to ship, the main file first."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the libraries that produced and can run the compiled files."""

    def device_constraints(self) -> dict:
        """What the deploying device must have (GPU, compute capability, …)."""
        return {}
