"""int8 recipes: static QDQ in the placement TensorRT's explicit quantization expects, dynamic, weight-only.

Static placement (docs/quantization.md has the reasoning):

* Q/DQ on the activation input and DQ on the int8 weight of every Conv, ConvTranspose, Gemm and MatMul whose
  B is a 2-D initializer (a Linear layer) — TensorRT's "weighted" layers, which it runs as int8 kernels;
* weights: int8, symmetric (zero point 0, range ±127), one scale per output channel (Conv axis 0, MatMul
  axis 1, Gemm axis 0 or 1 by transB); activations: int8, symmetric, one scale per tensor from calibration;
* no Q/DQ on the outputs of those layers, on biases (kept float: TensorRT fuses them in float), on
  activation × activation MatMuls (attention scores and attention × values, whose softmax input/output
  ranges are what int8 handles worst) or on elementwise/normalisation ops;
* a tensor read by a quantized layer and by float ops (a residual branch, ``encoder_hidden_states`` read by
  every cross-attention) reaches the float ops unquantized: only the quantized layers read the DQ output.

``layout="ort-cpu"`` places Q/DQ where ONNX Runtime's CPU provider turns them into integer kernels instead
(see :data:`LAYOUTS` and docs/quantization.md, "Layouts: tensorrt and ort-cpu"): a Conv's output is quantized
too (one QuantizeLinear, so ORT fuses DQ -> Conv -> Q into QLinearConv) and its bias is int32 (scale = input
scale x weight scale); every reader of an activation gets its own Q/DQ pair with its own scale/zero-point
initializers (a DequantizeLinear shared by several MatMuls blocks ORT's MatMulIntegerToFloat fusion, and ORT's
common-subexpression elimination merges dedicated pairs back when they share initializers); a Conv whose
output is a graph output (the UNet's conv_out) stays float.

Calibration ranges are computed once (:func:`calibrate`) and reused for any choice of quantized nodes;
:mod:`.mixed` relies on that. The ort-cpu layout also needs the ranges of the Conv outputs
(``calibrate(..., conv_outputs=True)``).
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

from ldm_runtime.errors import UserError

from ..onnx_io import external_data_files, model_size_bytes, save
from .calibrate import DEFAULT_CALIBRATION, DEFAULT_PERCENTILE, Calibration, _quiet_logging, _typed_model, calibrate
from .common import Feeds, Report, _say, block_names, output_metrics, run_onnx, weighted_nodes
from .qdq import (DEFAULT_LAYOUT, LAYOUTS, ORT_CPU_OPTIONS, STATIC_OPTIONS, _check_layout, _graph_output_convs,
                  quantize_qdq, resolve_exclude)
from .weight_only import _gather_tables, _weight_only

MODES = ("static", "dynamic", "weight_only")

__all__ = ["DEFAULT_LAYOUT", "LAYOUTS", "MODES", "Calibration", "calibrate", "int8"]


@dataclass(frozen=True)
class _Plan:
    """One int8 run: the typed model, its weighted nodes, the ones chosen for int8 and why the others are not."""

    onnx_in: Path
    onnx_out: Path
    typed: object
    weighted: list
    chosen: list
    excluded: dict
    external: bool
    threads: int | None
    report: Report


def int8(onnx_in: str | Path, onnx_out: str | Path, feeds: Feeds, *, mode: str = "static",
         calibrate_method: str = DEFAULT_CALIBRATION, percentile: float = DEFAULT_PERCENTILE,
         exclude: Sequence[str] = (), calibration: Calibration | None = None, embeddings: bool = True,
         layout: str = DEFAULT_LAYOUT, threads: int | None = None, report: Report = None) -> dict:
    """Write an int8 version of ``onnx_in`` to ``onnx_out``; returns the recipe.

    ``mode``: ``static`` (QDQ for TensorRT, calibrated on ``feeds``), ``dynamic`` (ORT's dynamic quantization:
    int8 weights, activations quantized per call by the CPU kernels; ORT-only ops) or ``weight_only`` (int8
    per-channel weights feeding a DequantizeLinear, float compute; standard ONNX, the choice for a CLIP text
    encoder). ``exclude``: node or block names left in float. ``calibration``: ranges from :func:`calibrate`
    (static; computed from ``feeds`` when None). ``embeddings``: weight_only also stores Gather embedding
    tables as int8 (per-row scales). ``layout`` (static): ``tensorrt`` (the default: the placement TensorRT's
    explicit quantization wants; ORT's CPU provider runs most of it as float) or ``ort-cpu`` (the placement ORT's
    CPU provider turns into QLinearConv / MatMulIntegerToFloat; module docstring). ``feeds`` are also used to
    measure the output against fp32."""
    if mode not in MODES:
        raise UserError(f"int8 mode '{mode}' is unknown; available: {', '.join(MODES)}")
    _check_layout(layout)
    t0 = time.perf_counter()
    feeds = list(feeds)  # any iterable of feed dicts (a calibration set's generator too)
    plan = _plan(Path(onnx_in), Path(onnx_out), exclude, mode == "static" and layout == "ort-cpu", threads, report)
    recipe: dict = {"method": f"int8-{mode}", "mode": mode}
    if mode == "static":
        calibration = calibration or calibrate(plan.onnx_in, feeds, method=calibrate_method, percentile=percentile,
                                               threads=threads, report=report, conv_outputs=layout == "ort-cpu")
        files = _static(plan, calibration, layout, recipe)
    elif mode == "dynamic":
        files = _dynamic(plan, recipe)
    else:
        files = _weight_only_mode(plan, embeddings, recipe)
    recipe.update(_measure(plan, feeds, files, exclude))
    recipe["seconds"] = round(time.perf_counter() - t0, 2)
    return recipe


def _plan(onnx_in: Path, onnx_out: Path, exclude: Sequence[str], ort_cpu: bool, threads, report) -> _Plan:
    typed = _typed_model(onnx_in)
    weighted = weighted_nodes(typed)
    excluded = dict.fromkeys(resolve_exclude(exclude, [w.name for w in weighted]), "excluded")
    if ort_cpu:
        excluded.update({n: "ort-cpu layout: a Conv whose output is a graph output stays float"
                         for n in _graph_output_convs(typed) if n not in excluded})
    return _Plan(onnx_in, onnx_out, typed, weighted, [w for w in weighted if w.name not in excluded], excluded,
                 bool(external_data_files(onnx_in)), threads, report)


_STATIC_PLACEMENT = ("Q/DQ on the activation input and DQ on the weight of Conv, ConvTranspose, Gemm and "
                     "MatMul-with-initializer-weight nodes; no Q/DQ on their outputs, on biases, on activation x "
                     "activation MatMuls or on elementwise/normalisation ops (TensorRT explicit-quantization "
                     "placement)")
_ORT_CPU_PLACEMENT = ("Q/DQ on the activation input and DQ on the weight of Conv, ConvTranspose, Gemm and "
                      "MatMul-with-initializer-weight nodes, plus one Q on the output of each Conv that is not a graph "
                      "output, int32 biases; one Q/DQ pair with its own scale/zero-point initializers per reader of "
                      "an activation; no Q/DQ on activation x activation MatMuls or elementwise/normalisation ops "
                      "(ONNX Runtime CPU placement: QLinearConv, MatMulIntegerToFloat, QGemm)")


def _static(plan: _Plan, calibration: Calibration, layout: str, recipe: dict) -> list[str]:
    """Static QDQ with activation scales from ``calibration``."""
    _say(plan.report, f"inserting Q/DQ ({layout} layout) on {len(plan.chosen)} of {len(plan.weighted)} weighted "
                      "nodes")
    model = quantize_qdq(plan.typed, calibration, [w.name for w in plan.chosen], layout)
    cpu = layout == "ort-cpu"
    recipe.update({
        "layout": layout,
        "tool": "onnxruntime.quantization QDQQuantizer (QuantFormat.QDQ), ranges from onnxruntime.quantization.calibrate",
        "calibration": calibration.describe(),
        "format": "QDQ (QuantizeLinear/DequantizeLinear around float ops)",
        "weights": "int8, symmetric (zero point 0, [-127, 127]), per output channel",
        "activations": "int8, symmetric (zero point 0), per tensor, from calibration ranges",
        "placement": _ORT_CPU_PLACEMENT if cpu else _STATIC_PLACEMENT,
        "extra_options": dict(ORT_CPU_OPTIONS if cpu else STATIC_OPTIONS),
    })
    return save(model, plan.onnx_out, external=plan.external)


def _dynamic(plan: _Plan, recipe: dict) -> list[str]:
    """ONNX Runtime's dynamic quantization of the Linear layers (MatMul with an initializer weight)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _say(plan.report, f"dynamic quantization of {len(plan.chosen)} weighted nodes")
    plan.excluded.update({w.name: f"{w.op_type}: dynamic mode quantizes MatMul (Linear) only"
                          for w in plan.chosen if w.op_type != "MatMul"})
    plan.chosen[:] = [w for w in plan.chosen if w.op_type == "MatMul"]
    with tempfile.TemporaryDirectory(prefix="ldm-quant-") as tmp, _quiet_logging():
        src = Path(tmp) / "model.onnx"
        save(plan.typed, src, external=plan.external)
        quantize_dynamic(src, plan.onnx_out, op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=False,
                         weight_type=QuantType.QInt8, nodes_to_quantize=[w.name for w in plan.chosen],
                         use_external_data_format=plan.external, extra_options={"MatMulConstBOnly": True})
    recipe.update({
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "format": "ORT integer ops (DynamicQuantizeLinear + MatMulInteger); ONNX Runtime only",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, asymmetric, per tensor, range computed at run time on every call",
        "placement": "MatMul with an initializer weight (Linear layers); Conv and Gemm stay float",
    })
    return [plan.onnx_out.name] + [f.name for f in external_data_files(plan.onnx_out)]


def _weight_only_mode(plan: _Plan, embeddings: bool, recipe: dict) -> list[str]:
    """int8 weights (and, with ``embeddings``, Gather tables per row) into DequantizeLinear, float compute."""
    _say(plan.report, f"weight-only int8 on {len(plan.chosen)} weighted nodes")
    tables = _gather_tables(plan.typed) if embeddings else []
    model = _weight_only(copy.deepcopy(plan.typed), [(w.weight, w.axis, w.op_type) for w in plan.chosen] + tables)
    recipe.update({
        "tool": "ldm_export.quantize (numpy round-to-nearest; standard ONNX DequantizeLinear)",
        "format": "int8 weight initializer -> DequantizeLinear(axis) -> float op",
        "weights": "int8, symmetric (zero point 0, [-127, 127]), per output channel"
                   + ("; embedding tables per row" if tables else ""),
        "activations": "float (not quantized)",
        "placement": "weights of Conv, ConvTranspose, Gemm and MatMul-with-initializer-weight nodes"
                     + (" and Gather embedding tables" if tables else ""),
        "embedding_tables": [t[0] for t in tables],
    })
    return save(model, plan.onnx_out, external=plan.external)


def _measure(plan: _Plan, feeds: list, files: list[str], exclude: Sequence[str]) -> dict:
    """The recipe's record of what was quantized, the sizes, and the output against fp32 on ``feeds``."""
    names = [w.name for w in plan.weighted]
    blocks = block_names(names)
    ref = run_onnx(plan.onnx_in, feeds, threads=plan.threads) if feeds else []
    got = run_onnx(plan.onnx_out, feeds, threads=plan.threads) if feeds else []
    return {
        "quantized_nodes": [{"node": w.name, "op_type": w.op_type, "block": blocks[w.name], "weight": w.weight,
                             "weight_params": w.weight_params, "axis": w.axis} for w in plan.chosen],
        "float_nodes": [{"node": w.name, "op_type": w.op_type, "block": blocks[w.name],
                         "reason": plan.excluded[w.name]} for w in plan.weighted if w.name in plan.excluded],
        "activation_matmuls_float": [n.name for n in plan.typed.graph.node
                                     if n.op_type == "MatMul" and n.name not in set(names)],
        "exclude": list(exclude),
        "files": files,
        "size_bytes": {"fp32": model_size_bytes(plan.onnx_in), "int8": model_size_bytes(plan.onnx_out)},
        "vs_fp32": output_metrics(ref, got) if feeds else None,
    }
