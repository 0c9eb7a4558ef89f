"""Compile targets: one module each behind :class:`Target`, its heavy library imported only there.

A new target is a module here and one line in :data:`TARGETS` (``"module:Class"``); nothing else in the
build branches on the target's name.
"""

from __future__ import annotations

import importlib

from ldm_runtime.errors import UserError

from .base import CompileJob, Compiled, Target

TARGETS: dict[str, str] = {
    "onnx": "ldm_export.targets.onnx:OnnxTarget",
    "tensorrt": "ldm_export.targets.tensorrt.target:TensorRTTarget",
    "coreml": "ldm_export.targets.coreml.target:CoreMLTarget",
}


def target_class(name: str) -> type[Target]:
    if name not in TARGETS:
        raise UserError(f"unknown target '{name}'; available: {', '.join(TARGETS)}")
    module, cls = TARGETS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_target(name: str, options: dict | None = None) -> Target:
    """The target ``name`` with its build options; an option it does not take is refused, naming the
    targets that do (so ``--workspace`` on an ONNX build is an error, not silently ignored)."""
    cls = target_class(name)
    options = dict(options or {})
    for key in options:
        if key not in cls.OPTIONS:
            takers = [t for t in TARGETS if key in target_class(t).OPTIONS]
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} applies to --target {' or '.join(takers) or 'none'} only; this build is "
                            f"--target {name}")
    return cls(**options)


__all__ = ["TARGETS", "CompileJob", "Compiled", "Target", "get_target", "target_class"]
