"""The interface every compile target implements (one module per target, its heavy library imported there)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ldm_runtime.errors import UserError
from ldm_runtime.runners import RunnerOptions

from ..precision import PRECISIONS, needs_calibration


@dataclass(frozen=True)
class CompileJob:
    """One component to compile: its exported (and, for a quantized build, quantized) ONNX files, or, for a
    target that converts from torch (``Target.SOURCE == "torch"``), none: the target reads ``graph``."""

    staging: Path                   # the bundle being written; every path below is relative to it
    component: str                  # text_encoder | class_embedder | unet | vae_decoder | vae_encoder
    onnx_files: tuple[str, ...]     # the ONNX graph, then its external-data file if any (empty: SOURCE torch)
    graph: object                   # the ldm_export.export.ComponentGraph (torch module and IO specs)
    sizes: tuple[tuple[int, int], ...]   # the declared (width, height) sizes
    precision: str                  # the bundle's precision (fp32 | fp16 | int8 | mixed)
    report: Callable[[str], None] = lambda msg: None
    feeds: list | None = None       # the calibration set's inputs of this component, when the target needs them


@dataclass(frozen=True)
class Compiled:
    """What a target made of one component."""

    files: list[str]                                  # relative to the staging folder, the main file first
    entry: dict = field(default_factory=dict)         # more manifest fields of the component (shapes, chunks, …)
    checks: list[dict] = field(default_factory=list)  # the target's own checks against torch (the build records them)
    recipe: dict | None = None                        # the target's own compression record, when it compressed


class Target(ABC):
    name: str
    backend: str  # the ldm_runtime backend that runs what this target produces
    OPTIONS: tuple[str, ...] = ()  # the build options this target takes (its constructor's keywords)
    PRECISIONS: tuple[str, ...] = PRECISIONS   # the --precision values it builds
    DEFAULT_PRECISION = "fp32"
    # what compile() reads: "onnx", the exported graph after the precision's ONNX recipe; "torch", the torch
    # module itself (the target converts it; the build then skips the ONNX export, its check and the recipes)
    SOURCE = "onnx"
    SIZES = "range"  # the image sizes the bundle serves: "range" (any step multiple between the declared), "declared"
    # the backend (and its options) that records a quantized bundle's own golden vectors at build time
    REFERENCE: tuple[str, RunnerOptions] = ("onnxruntime", RunnerOptions(provider="cpu"))

    def check_precision(self, precision: str) -> None:
        if precision not in self.PRECISIONS:
            raise UserError(f"--target {self.name} builds --precision {' or '.join(self.PRECISIONS)}; got "
                            f"'{precision}'")

    def needs_calibration(self, precision: str, components: list[str]) -> bool:
        """Whether the build needs a calibration set (given with --calibration, or collected)."""
        return needs_calibration(precision, components)

    def own_golden(self, precision: str) -> bool:
        """Whether the bundle's golden vectors are its own outputs (it does not compute torch's fp32 numbers)."""
        return precision != "fp32"

    def compression(self) -> str | None:
        """The weight compression applied on top of the precision (``quantization.compression``), if any."""
        return None

    @abstractmethod
    def compile(self, job: CompileJob) -> Compiled:
        """Turn one component into this target's files."""

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
