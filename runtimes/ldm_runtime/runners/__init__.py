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
    "coreml": "ldm_runtime.runners.coreml:CoreMLRunner",
    "coreml-reference": "ldm_runtime.runners.coreml_reference:CoreMLReferenceRunner",
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


def check_backend(manifest: dict, backend: str) -> None:
    """Refuse a backend that cannot read the bundle's files (ONNX Runtime on Core ML packages, say)."""
    own, asked = runner_class(default_backend(manifest)), runner_class(backend)
    if asked.FORMAT != own.FORMAT:
        able = [b for b in BACKENDS if runner_class(b).FORMAT == own.FORMAT]
        raise UserError(f"--backend {backend} runs {asked.FORMAT} files; this bundle holds {own.FORMAT} files "
                        f"(target {manifest['target']}); try --backend {' or '.join(able)}")


def backend_for(manifest: dict, preferred: str | None) -> str:
    """``preferred`` when it can read the bundle's files, else the bundle's own backend (for commands over
    several bundles: ``--backend coreml-reference`` applies to the Core ML ones)."""
    own = default_backend(manifest)
    if preferred is not None and runner_class(preferred).FORMAT == runner_class(own).FORMAT:
        return preferred
    return own


def options_for(backend: str, options: RunnerOptions) -> RunnerOptions:
    """``options`` without the backend-specific fields ``backend`` does not read (back to their defaults)."""
    import dataclasses

    cls, default = runner_class(backend), RunnerOptions()
    return dataclasses.replace(options, **{f: getattr(default, f) for f in options.given() if f not in cls.OPTIONS})


def make_runner(backend: str, name: str, model_path: Path, spec: dict,
                options: RunnerOptions = RunnerOptions()) -> Runner:
    """Create (but do not load) a runner for one component."""
    cls = runner_class(backend)
    check_options(cls, options)
    return cls(name, model_path, spec, options)


_FLAGS = {"cache_dir": "--cache"}   # the ldm-run flag of a RunnerOptions field, where it is not --field-name


def check_options(cls: type[Runner], options: RunnerOptions) -> None:
    """Refuse a backend-specific option the backend would ignore (``--provider`` on TensorRT, say)."""
    for field in options.given():
        if field not in cls.OPTIONS:
            takers = [b for b in BACKENDS if field in runner_class(b).OPTIONS]
            flag = _FLAGS.get(field, f"--{field.replace('_', '-')}")
            raise UserError(f"{flag} applies to --backend {' or '.join(takers)} only; "
                            f"this run uses --backend {cls.backend}")


__all__ = ["BACKENDS", "RUNNERS", "PrepareOptions", "Runner", "RunnerOptions", "default_backend", "backend_for", "check_backend", "check_options", "make_runner",
           "options_for", "runner_class"]
