"""Backend runners. Each backend module imports its heavy library lazily."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import Runner

BACKENDS = ("onnxruntime",)


def make_runner(backend: str, name: str, model_path: Path, spec: dict, **options) -> Runner:
    """Create (but do not load) a runner for one component."""
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(name, model_path, spec, **options)
    raise UserError(f"no runtime backend '{backend}'; this ldm-runtime supports: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Runner", "make_runner"]
