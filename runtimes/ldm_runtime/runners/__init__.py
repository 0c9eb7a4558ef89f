"""Backend runners: one module each behind :class:`Runner`, its heavy library imported only there, when a
runner is made. A new backend is a module here and one line in :data:`RUNNERS` (``"module:Class"``);
nothing else in the runtime branches on a backend's name.

The backend a bundle runs on by default is the one its manifest names (``backend.name``, written by the
build's target); ``--backend`` picks another that can run the same files.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import BundleError, UserError
from .base import PrepareOptions, Runner, RunnerOptions

RUNNERS: dict[str, str] = {
    "onnxruntime": "ldm_runtime.runners.onnxruntime:OnnxRuntimeRunner",
    "tensorrt": "ldm_runtime.runners.tensorrt:TensorRTRunner",
}
BACKENDS = tuple(RUNNERS)


def runner_class(backend: str) -> type[Runner]:
    if backend not in RUNNERS:
        raise UserError(f"no runtime backend '{backend}'; this ldm-runtime supports: {', '.join(BACKENDS)}")
    module, cls = RUNNERS[backend].split(":")
    return getattr(importlib.import_module(module), cls)


def default_backend(manifest: dict) -> str:
    """The backend the bundle was built for (``backend.name`` in its manifest)."""
    name = manifest["backend"]["name"]
    if name not in RUNNERS:
        raise BundleError(f"the bundle was built for backend '{name}', which this ldm-runtime does not have (it "
                          f"has {', '.join(BACKENDS)}); upgrade ldm-runtime or pass --backend")
    return name


def make_runner(backend: str, name: str, model_path: Path, spec: dict,
                options: RunnerOptions = RunnerOptions()) -> Runner:
    """Create (but do not load) a runner for one component."""
    return runner_class(backend)(name, model_path, spec, options)


__all__ = ["BACKENDS", "RUNNERS", "PrepareOptions", "Runner", "RunnerOptions", "default_backend", "make_runner", "runner_class"]
