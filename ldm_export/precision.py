"""Precision recipes of ``ldm-export build --precision``: which component gets which quantization.

A recipe is data: per component, one of

* ``fp32`` — the export as is;
* ``fp16`` — fp32 inputs/outputs, fp16 inside, with the overflow scan on calibration data
  keeping in fp32 the ops that would leave fp16's range (:func:`ldm_export.quantize.fp16`);
* ``int8-static`` — QDQ graph, per-channel int8 weights, activation scales from calibration
  data, Q/DQ where TensorRT's explicit quantization expects them (``--int8-layout tensorrt``, the
  default) or where ONNX Runtime's CPU provider turns them into integer kernels
  (``--int8-layout ort-cpu``) (:func:`ldm_export.quantize.int8`);
* ``int8-weight-only`` — int8 weights (embedding tables included) dequantized into float compute:
  for text encoders, which run once per image, so their cost is size rather than time; standard
  ONNX (DequantizeLinear) that TensorRT and Core ML take, unlike ONNX Runtime's dynamic-quantization
  ops, and closer to fp32 on the demo text encoder (57.6 dB vs 42.8 dB, docs/quantization.md);
* ``mixed`` — int8-static with the most sensitive blocks kept in fp32 until the UNet output
  meets ``--target-psnr`` on calibration data (:func:`ldm_export.quantize.mixed`).

The autoencoder stays fp16 in the int8 recipes (its decoder is where int8 hurts images most and
costs least time: it runs once per image), as NVIDIA's and Apple's Stable Diffusion deployments do.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from ldm_runtime.errors import UserError

RECIPES: dict[str, dict[str, str]] = {
    "fp32": {},
    "fp16": {"text_encoder": "fp16", "unet": "fp16", "vae_decoder": "fp16", "vae_encoder": "fp16"},
    "int8": {"text_encoder": "int8-weight-only", "unet": "int8-static", "vae_decoder": "fp16", "vae_encoder": "fp16"},
    "mixed": {"text_encoder": "int8-weight-only", "unet": "mixed", "vae_decoder": "fp16", "vae_encoder": "fp16"},
}
PRECISIONS = tuple(RECIPES)
DEFAULT_TARGET_PSNR = 35.0  # dB, UNet output vs fp32 on calibration data (mixed recipe)
NEEDS_CALIBRATION = ("fp16", "int8-static", "mixed")


def component_recipe(precision: str, component: str) -> str:
    return RECIPES[precision].get(component, "fp32")


def needs_calibration(precision: str, components: list[str]) -> bool:
    return any(component_recipe(precision, c) in NEEDS_CALIBRATION for c in components)


def quantize_component(recipe: str, fp32_onnx: Path, out_onnx: Path, feeds: list[dict[str, np.ndarray]] | None,
                       *, target_psnr: float | None = None, int8_layout: str = "tensorrt",
                       report: Callable[[str], None] | None = None) -> dict:
    """Write ``out_onnx`` from ``fp32_onnx`` with ``recipe``; returns the recipe record for the bundle."""
    from . import quantize

    if recipe == "fp32":  # the export itself (the build drops its fp32 folder afterwards): move, don't copy
        shutil.move(fp32_onnx, out_onnx)
        data = fp32_onnx.with_name(fp32_onnx.name + ".data")
        if data.exists():
            shutil.move(data, out_onnx.with_name(out_onnx.name + ".data"))
        return {"recipe": "fp32"}
    if recipe in NEEDS_CALIBRATION and not feeds:
        raise UserError(f"recipe {recipe} needs calibration data for this component and the calibration set has none")
    if recipe == "fp16":
        rec = quantize.fp16(fp32_onnx, out_onnx, feeds, report=report)
    elif recipe == "int8-static":
        rec = quantize.int8(fp32_onnx, out_onnx, feeds, mode="static", layout=int8_layout, report=report)
    elif recipe == "int8-weight-only":
        rec = quantize.int8(fp32_onnx, out_onnx, feeds or [], mode="weight_only", report=report)
    elif recipe == "mixed":
        rec = quantize.mixed(fp32_onnx, out_onnx, feeds, target_psnr=target_psnr or DEFAULT_TARGET_PSNR,
                             layout=int8_layout, report=report)
    else:  # pragma: no cover - RECIPES holds only the names above
        raise ValueError(recipe)
    return {"recipe": recipe, **rec}
