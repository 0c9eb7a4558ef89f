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
    cache_dir: Path | None = None  # tensorrt: the engine cache (default: the bundle's engines/)
    device: int = 0               # tensorrt: the GPU's index


class Runner(ABC):
    """Runs one compiled component. ``spec`` is the component's manifest entry."""

    backend = "base"

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

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _release(self) -> None: ...
