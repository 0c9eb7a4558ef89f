"""Compile targets: one module each behind :class:`Target`, its heavy library imported only there.

A new target is a module here and one line in :data:`TARGETS` (``"module:Class"``); nothing else in the
build branches on the target's name.
"""

from __future__ import annotations

import importlib

from ldm_runtime.errors import UserError

from .base import CompileJob, Target

TARGETS: dict[str, str] = {
    "onnx": "ldm_export.targets.onnx:OnnxTarget",
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UserError(f"unknown target '{name}'; available: {', '.join(TARGETS)}")
    module, cls = TARGETS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["TARGETS", "CompileJob", "Target", "get_target"]
