"""The runner contract shared by every backend (after Polygraphy's BaseRunner).

The base class owns state checks, input validation and context-manager
behaviour; a backend implements ``_load``, ``_run`` and ``_release`` over
``dict[str, np.ndarray]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class RunnerOptions:
    """How the runners of one pipeline run; each backend reads the options that concern it."""

    provider: str | None = None   # onnxruntime: an execution provider (alias or full name); None: the best one
    threads: int = 0              # intra-op threads (0: the backend's default)
    low_memory: bool = False      # one component resident at a time: keep each runner's footprint small
    cache_dir: Path | None = None  # onnxruntime, tensorrt: what prepare wrote (default: the bundle's engines/)
    device: int = 0               # tensorrt: the GPU's index
    compute_units: str = "all"    # coreml: all | cpu-and-ne | cpu-and-gpu | cpu
    arithmetic: str = "program"   # coreml-reference: the program's own precision, or "fp32"

    def given(self) -> list[str]:
        """The backend-specific options set to something other than their default."""
        default = RunnerOptions()
        return [f for f in BACKEND_OPTIONS if getattr(self, f) != getattr(default, f)]


# the RunnerOptions fields only some backends read (each Runner names its own in OPTIONS)
BACKEND_OPTIONS = ("provider", "cache_dir", "device", "compute_units", "arithmetic")


def bundle_manifest(model_path: Path) -> dict | None:
    """The manifest of the bundle a component's file lies in (validated by ``open_bundle`` before any runner
    is made), or None for a graph outside a bundle."""
    import json

    from ..bundle import MANIFEST

    path = model_path.parent / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def graph_hashes(model_path: Path, manifest: dict | None = None) -> tuple[str, str | None]:
    """sha256 of a component's ONNX file and of its external data (None without), from the bundle's
    manifest (``manifest``, or read beside the file) when the file is listed there (the bundle was checked on
    open), else computed."""
    from ..bundle import sha256_file

    data = model_path.with_name(model_path.name + ".data")
    files: dict[str, str] = (manifest or bundle_manifest(model_path) or {}).get("files", {})

    def digest(p: Path) -> str:
        return files.get(p.name) or sha256_file(p)

    return digest(model_path), (digest(data) if data.is_file() else None)


@dataclass(frozen=True)
class PrepareOptions:
    """``ldm-run prepare``: what a backend may need to build its per-device artefacts."""

    cache_dir: Path | None = None     # default: the bundle's engines/
    workspace_bytes: int | None = None  # tensorrt: the builder's memory-pool cap
    timing_cache: Path | None = None  # tensorrt: reused and updated between builds
    refittable: bool | None = None    # tensorrt: refittable engines (adapters); None: as the bundle was built
    provider: str | None = None       # onnxruntime: the execution provider to optimize for
    force: bool = False               # build again even when the cache has an entry


class Runner(ABC):
    """Runs one compiled component. ``spec`` is the component's manifest entry."""

    backend = "base"
    OPTIONS: tuple[str, ...] = ()   # the backend-specific RunnerOptions fields this backend reads
    FORMAT = "onnx"                 # the files it runs: "onnx" graphs or Core ML "mlprogram" packages

    def __init__(self, name: str, model_path: Path, spec: dict, options: RunnerOptions = RunnerOptions()):
        self.name = name
        self.model_path = Path(model_path)
        self.spec = spec
        self.options = options
        self.is_loaded = False

    # -- lifecycle ---------------------------------------------------------
    def load(self) -> "Runner":
        if not self.is_loaded:
            self._load()
            self.is_loaded = True
        return self

    def release(self) -> None:
        if self.is_loaded:
            self._release()
            self.is_loaded = False

    def __enter__(self) -> "Runner":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- inference ---------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_loaded:
            raise RuntimeError(f"runner for {self.name} used before load()")
        self._check_inputs(feeds)
        return self._run(feeds)

    def _check_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        expected = self.spec["inputs"]
        if set(feeds) != set(expected):
            raise UserError(f"{self.name}: inputs {sorted(feeds)} do not match the bundle's {sorted(expected)}")
        for key, spec in expected.items():
            arr = feeds[key]
            if arr.dtype != np.dtype(spec["dtype"]):
                raise UserError(f"{self.name}.{key}: dtype {arr.dtype}; expected {spec['dtype']}")
            if arr.ndim != len(spec["shape"]):
                raise UserError(f"{self.name}.{key}: rank {arr.ndim} (shape {arr.shape}); "
                                f"expected shape {spec['shape']}")
            for got, want in zip(arr.shape, spec["shape"]):
                if isinstance(want, int) and got != want:
                    raise UserError(f"{self.name}.{key}: shape {arr.shape}; expected {spec['shape']}")

    def fixed_batch(self) -> int | None:
        """The static batch size of the first input, or None when the batch is dynamic."""
        first = next(iter(self.spec["inputs"].values()))
        return first["shape"][0] if isinstance(first["shape"][0], int) else None

    @classmethod
    def prepare(cls, bundle, options: PrepareOptions, report) -> list[str]:
        """Build what this backend needs per device (engines, optimized graphs) into the bundle's cache;
        returns one line per component. Backends with nothing to prepare say so."""
        from ..errors import UserError

        raise UserError(f"the {cls.backend} backend has nothing to prepare")

    # -- adapters ----------------------------------------------------------
    # why this backend takes no adapter packs (None: it takes them, through swap_weights)
    ADAPTER_REFUSAL: str | None = "this backend cannot swap weights; merge the LoRA at build (ldm-export build --lora)"

    def swap_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Run with these values of the named weights (the graph's initializer names) instead of the
        bundle's, from the next call on; an empty dict goes back to the bundle's own weights."""
        raise UserError(f"{self.name}: {self.ADAPTER_REFUSAL}")

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _release(self) -> None: ...
