"""The interface every compile target implements (one module per target, its heavy library imported there)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class CompileJob:
    """One component to compile: its exported (and, for a quantized build, quantized) ONNX files."""

    staging: Path                   # the bundle being written; every path below is relative to it
    component: str                  # text_encoder | class_embedder | unet | vae_decoder | vae_encoder
    onnx_files: tuple[str, ...]     # the ONNX graph, then its external-data file if any
    graph: object                   # the ldm_export.export.ComponentGraph (torch module and IO specs)
    sizes: tuple[tuple[int, int], ...]   # the declared (width, height) sizes
    precision: str                  # the bundle's precision (fp32 | fp16 | int8 | mixed)
    report: Callable[[str], None] = lambda msg: None


class Target(ABC):
    name: str
    backend: str  # the ldm_runtime backend that runs what this target produces
    OPTIONS: tuple[str, ...] = ()  # the build options this target takes (its constructor's keywords)

    @abstractmethod
    def compile(self, job: CompileJob) -> list[str]:
        """Turn one component into this target's files (relative to ``job.staging``), the main file first."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the libraries that produced and can run the compiled files."""

    def device_constraints(self) -> dict:
        """What the deploying device must have (GPU, compute capability, …)."""
        return {}

    def finalize(self, staging: Path, manifest: dict, report: Callable[[str], None], bundle_name: str) -> dict:
        """After every component and the golden vectors, before the manifest is written: whatever the target
        adds to the bundle as a whole (engines for this machine, say). Returns the manifest's
        ``device_constraints``."""
        return self.device_constraints()
