"""Compile targets. Each lives in its own module and imports its heavy library only there."""

from __future__ import annotations

from ldm_runtime.errors import UserError

from .base import Target

TARGETS = ("onnx",)


def get_target(name: str) -> Target:
    if name == "onnx":
        from .onnx import OnnxTarget

        return OnnxTarget()
    if name in ("tensorrt", "coreml"):
        raise UserError(f"target '{name}' is not available in this version of ldm-export; "
                        f"available: {', '.join(TARGETS)}")
    raise UserError(f"unknown target '{name}'; available: {', '.join(TARGETS)}")


__all__ = ["TARGETS", "Target", "get_target"]
