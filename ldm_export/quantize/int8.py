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

import contextlib
import copy
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from ldm_runtime.errors import UserError

from ..onnx_io import external_data_files, model_size_bytes, save
from .common import (WEIGHTED_OPS, Feeds, Report, _say, block_names, ensure_node_names, output_metrics, run_onnx, session_options, weighted_nodes)

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION = "minmax"
DEFAULT_PERCENTILE = 99.999
MODES = ("static", "dynamic", "weight_only")
LAYOUTS = ("tensorrt", "ort-cpu")   # static Q/DQ placement: TensorRT explicit quantization / ORT CPU integer kernels
DEFAULT_LAYOUT = "tensorrt"


# ------------------------------------------------------------------------------------------ calibration

@dataclass
class Calibration:
    """Activation ranges of the inputs of the weighted nodes of one model, computed once."""

    method: str
    ranges: object                   # onnxruntime.quantization.TensorsData
    feeds: int
    options: dict = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> dict:
        return {"method": self.method, "feeds": self.feeds, "tensors": len(self.ranges.data),
                "options": self.options, "seconds": round(self.seconds, 2)}


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Feeds, names: Sequence[str]):
        self._feeds = [{k: f[k] for k in names} for f in feeds]
        self._i = 0

    def get_next(self):
        if self._i >= len(self._feeds):
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def __len__(self):
        return len(self._feeds)


@contextlib.contextmanager
def _quiet_logging():
    """ORT's quantize_* log a pre-processing advice as warnings on the root logger; silence them meanwhile."""
    import logging

    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def _typed_model(path: Path):
    """The model with shape inference applied and node names ensured, as ORT's quantizer wants it."""
    from onnxruntime.quantization.quant_utils import add_infer_metadata, load_model_with_shape_infer

    model = load_model_with_shape_infer(Path(path))
    ensure_node_names(model)
    add_infer_metadata(model)
    return model


def calibrate(onnx_in: str | Path, feeds: Feeds, *, method: str = DEFAULT_CALIBRATION,
              percentile: float = DEFAULT_PERCENTILE, threads: int | None = None, report: Report = None,
              every_op: bool = False, conv_outputs: bool = False) -> Calibration:
    """Ranges of the activation inputs of the weighted nodes over ``feeds``, with ORT's calibrators.

    ``minmax``: the largest |x| seen (reduced inside the graph: only two scalars per tensor leave ORT);
    ``percentile``: the ``percentile``-th percentile of |x| (2048-bin histogram); ``entropy``: the threshold
    minimising the KL divergence between the histogram and its int8 version (2048 bins, 128 quantized bins:
    TensorRT's entropy calibration). The histograms are fed one feed at a time (ORT's calibrators otherwise keep
    every intermediate of every feed in memory). The quantizer makes every range symmetric (max(|min|, |max|)).
    ``every_op``: ranges for the inputs and outputs of every node instead (for quantizing all op types).
    ``conv_outputs``: also the outputs of the Conv nodes that are not graph outputs (``layout="ort-cpu"``)."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater

    if method not in CALIBRATION_METHODS:
        raise UserError(f"calibration method '{method}' is unknown; available: {', '.join(CALIBRATION_METHODS)}")
    feeds = list(feeds)
    if not feeds:
        raise UserError("calibration needs at least one feed")
    t0 = time.perf_counter()
    # entropy: TensorRT's setting (2048-bin histogram, 128 quantized bins); ORT's default of 128/128 leaves no
    # threshold to search and returns the min/max range
    options = ({"percentile": percentile, "symmetric": True, "num_bins": 2048} if method == "percentile"
               else {"num_bins": 2048, "num_quantized_bins": 128} if method == "entropy" else {})
    _say(report, f"calibrating ({method}) on {len(feeds)} feeds")
    with tempfile.TemporaryDirectory(prefix="ldm-quant-") as tmp:
        typed = _typed_model(Path(onnx_in))
        weighted = {w.name for w in weighted_nodes(typed)}
        wanted = {n.input[0] for n in typed.graph.node if n.name in weighted}
        if conv_outputs:
            wanted |= _conv_outputs(typed, weighted)
        src = Path(tmp) / "model.onnx"
        save(typed, src, external=bool(external_data_files(onnx_in)))
        del typed
        aug = str(Path(tmp) / "augmented.onnx")
        if method == "minmax":
            cal = MinMaxCalibrater(src, None, aug, use_external_data_format=True)
        elif method == "percentile":
            cal = PercentileCalibrater(src, None, aug, use_external_data_format=True, **options)
        else:
            cal = EntropyCalibrater(src, None, aug, use_external_data_format=True, **options)
        if not every_op:
            select = cal.select_tensors_to_calibrate

            def only_weighted_inputs(model):
                tensors, infos = select(model)
                return tensors & wanted, infos

            cal.select_tensors_to_calibrate = only_weighted_inputs
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            cal.augment_graph()
            so = session_options(threads)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            cal.infer_session = ort.InferenceSession(aug, so, providers=["CPUExecutionProvider"])
            names = [i.name for i in cal.infer_session.get_inputs()]
            if method == "minmax":
                cal.collect_data(_Reader(feeds, names))
            else:
                for f in feeds:
                    cal.collect_data(_Reader([f], names))
            ranges = cal.compute_data()
        del cal
    if conv_outputs:
        options = dict(options, conv_outputs=True)
    return Calibration(method, ranges, len(feeds), options, time.perf_counter() - t0)


def _graph_output_convs(model) -> set[str]:
    """Conv nodes whose output is a graph output: the ort-cpu layout leaves them float (a quantized graph output
    would be int8 precision; ORT's quantizer cannot quantize a Conv's inputs without its output)."""
    outputs = {o.name for o in model.graph.output}
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.output[0] in outputs}


def _conv_outputs(model, names: set[str]) -> set[str]:
    """Outputs of the Conv nodes among ``names`` that are not graph outputs (ort-cpu quantizes them)."""
    outputs = {o.name for o in model.graph.output}
    return {n.output[0] for n in model.graph.node
            if n.op_type == "Conv" and n.name in names and n.output[0] not in outputs}


# ------------------------------------------------------------------------------------------ static QDQ

STATIC_OPTIONS = {
    "ActivationSymmetric": True,           # int8 activations, zero point 0
    "WeightSymmetric": True,               # int8 weights in [-127, 127], zero point 0
    "QuantizeBias": False,                 # biases stay float
    "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS),   # no Q/DQ after the weighted layers
    "AddQDQPairToWeight": False,           # weights stored as int8 initializers feeding a DequantizeLinear
}


ORT_CPU_OPTIONS = dict(
    STATIC_OPTIONS,
    ActivationSymmetric=False,             # uint8 activations, zero point from the range
    QuantizeBias=True,                     # int32 Conv/Gemm biases (QLinearConv wants them)
    DedicatedQDQPair=True,                 # one Q/DQ pair per reader of an activation
    OpTypesToExcludeOutputQuantization=["ConvTranspose", "Gemm", "MatMul"],   # Conv outputs are quantized
)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise UserError(f"int8 layout '{layout}' is unknown; available: {', '.join(LAYOUTS)}")


def quantize_qdq(typed_model, calibration: Calibration, nodes: Sequence[str], layout: str = DEFAULT_LAYOUT):
    """A copy of ``typed_model`` (from :func:`_typed_model`) with exactly ``nodes`` quantized (static QDQ,
    placement in the module docstring; ``layout``: one of :data:`LAYOUTS`)."""
    from onnxruntime.quantization import QDQQuantizer, QuantType

    _check_layout(layout)
    model = copy.deepcopy(typed_model)
    if not nodes:
        return model
    cpu = layout == "ort-cpu"
    if cpu:
        nodes = [n for n in nodes if n not in _graph_output_convs(model)]
        if not nodes:  # an empty list would make ORT's quantizer quantize every node
            return model
        missing = _conv_outputs(model, set(nodes)) - set(calibration.ranges.data)
        if missing:
            raise UserError(f"layout 'ort-cpu' needs the ranges of the Conv outputs ({len(missing)} missing, e.g. "
                            f"'{min(missing)}'): calibrate(..., conv_outputs=True)")
    if cpu:
        # uint8 activations, 7-bit weights: ORT's x86 kernels are u8 x s8 (it rewrites int8 activations to uint8,
        # which leaves a Conv whose output Q is shared unfused) and, without VNNI, u8 x s8 pairs can saturate
        # 16-bit intermediates unless the weights use 7 bits (reduce_range)
        q = QDQQuantizer(model, True, True, QuantType.QInt8, QuantType.QUInt8, calibration.ranges, list(nodes), [],
                         list(WEIGHTED_OPS), dict(ORT_CPU_OPTIONS))
    else:
        q = QDQQuantizer(model, True, False, QuantType.QInt8, QuantType.QInt8, calibration.ranges, list(nodes), [],
                         list(WEIGHTED_OPS), dict(STATIC_OPTIONS))
    out = q.quantize_model()
    if cpu:
        convs = {n.output[0] for n in out.graph.node if n.op_type == "Conv" and n.name in set(nodes)}
        _float_for_float_consumers(out, set(nodes), keep=convs)
        _one_output_quantizer(out, convs)
        _unshare_qdq_params(out)
    else:
        _float_for_float_consumers(out, set(nodes))
    return out


def _one_output_quantizer(model, tensors: set[str]) -> None:
    """DedicatedQDQPair gives a tensor read by several nodes one QuantizeLinear per reader; ORT fuses a Conv
    into QLinearConv only when its output feeds a single QuantizeLinear. Keep the first Q of each of ``tensors``
    and let every DQ read it (each DQ keeps its own scale/zero-point initializers, equal values)."""
    g = model.graph
    qs: dict[str, list] = {}
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in tensors:
            qs.setdefault(n.input[0], []).append(n)
    for nodes in qs.values():
        keep, extra = nodes[0], nodes[1:]
        for q in extra:
            for n in g.node:
                for i, x in enumerate(n.input):
                    if x == q.output[0]:
                        n.input[i] = keep.output[0]
            g.node.remove(q)


def _unshare_qdq_params(model) -> None:
    """Give every activation QuantizeLinear/DequantizeLinear its own scale and zero-point initializers, so ORT's
    common-subexpression elimination cannot merge the dedicated pairs back into one shared DQ."""
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.input[0] in inits:
            continue
        for k in (1, 2):
            if k < len(n.input) and n.input[k] in inits:
                t = inits[n.input[k]]
                name = f"{t.name}__{n.name}"
                g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(t), name))
                n.input[k] = name
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def _float_for_float_consumers(model, quantized: set[str], keep: set[str] = frozenset()) -> None:
    """ORT's quantizer hands the DQ output of an activation to every consumer of the tensor; give nodes that
    are not quantized the float tensor back (except for the tensors in ``keep``: quantized Conv outputs, whose
    only reader must be their QuantizeLinear), then drop Q/DQ pairs nobody reads."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    to_float = {}
    for n in g.node:
        if n.op_type == "DequantizeLinear":
            q = producer.get(n.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in keep:
                to_float[n.output[0]] = q.input[0]
    for n in g.node:
        if n.name in quantized or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(n.input):
            if name in to_float:
                n.input[i] = to_float[name]
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def resolve_exclude(exclude: Sequence[str], node_names: Sequence[str]) -> set[str]:
    """Node names from ``exclude``, whose entries are node names or block names (see :func:`block_names`)."""
    blocks = block_names(node_names)
    out = set()
    for e in exclude:
        hit = {n for n in node_names if n == e or blocks[n] == e}
        if not hit:
            raise UserError(f"'{e}' in exclude is neither a quantizable node nor a block of this model")
        out |= hit
    return out


# ------------------------------------------------------------------------------------------ weight-only

def _weight_only(model, targets: list[tuple[str, int, str]]):
    """Replace each (initializer, axis, consumer-op) weight by int8 + DequantizeLinear (symmetric, one scale per
    slice along ``axis``); the consumers compute in float."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    done = {}
    new_nodes = []
    for name, axis, _op in targets:
        if name in done:
            continue
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=red)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        qw = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        qn, sn, zn, dq = f"{name}_int8", f"{name}_scale", f"{name}_zero_point", f"{name}_dequantized"
        g.initializer.remove(inits[name])
        g.initializer.extend([numpy_helper.from_array(qw, qn), numpy_helper.from_array(scale, sn),
                              numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), zn)])
        new_nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dq], name=f"{name}_DequantizeLinear",
                                          axis=axis))
        done[name] = dq
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in done:
                n.input[i] = done[x]
    # DequantizeLinear nodes first: their inputs are all initializers, so the order stays topological
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return model


def _gather_tables(model) -> list[tuple[str, int, str]]:
    """Embedding tables: 2-D float initializers read only by Gather as its data input (per-row scales)."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for k, x in enumerate(n.input):
            if x in inits:
                readers.setdefault(x, []).append((n, k))
    out = []
    for name, r in readers.items():
        t = inits[name]
        if t.data_type == 1 and len(t.dims) == 2 and all(n.op_type == "Gather" and k == 0
                                                         and _gather_axis(n) == 0 for n, k in r):
            out.append((name, 0, "Gather"))
    return out


def _gather_axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


# ------------------------------------------------------------------------------------------ public

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
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    external = bool(external_data_files(onnx_in))
    typed = _typed_model(onnx_in)
    weighted = weighted_nodes(typed)
    names = [w.name for w in weighted]
    excluded = dict.fromkeys(resolve_exclude(exclude, names), "excluded")
    if mode == "static" and layout == "ort-cpu":
        excluded.update({n: "ort-cpu layout: a Conv whose output is a graph output stays float"
                         for n in _graph_output_convs(typed) if n not in excluded})
    chosen = [w for w in weighted if w.name not in excluded]
    blocks = block_names(names)
    other_matmuls = [n.name for n in typed.graph.node if n.op_type == "MatMul" and n.name not in set(names)]
    recipe: dict = {"method": f"int8-{mode}", "mode": mode}
    if mode == "static":
        recipe["layout"] = layout

    if mode == "static":
        if calibration is None:
            calibration = calibrate(onnx_in, feeds, method=calibrate_method, percentile=percentile,
                                    threads=threads, report=report, conv_outputs=layout == "ort-cpu")
        _say(report, f"inserting Q/DQ ({layout} layout) on {len(chosen)} of {len(weighted)} weighted nodes")
        model = quantize_qdq(typed, calibration, [w.name for w in chosen], layout)
        files = save(model, onnx_out, external=external)
        recipe.update({
            "tool": "onnxruntime.quantization QDQQuantizer (QuantFormat.QDQ), ranges from onnxruntime.quantization.calibrate",
            "calibration": calibration.describe(),
            "format": "QDQ (QuantizeLinear/DequantizeLinear around float ops)",
            "weights": "int8, symmetric (zero point 0, [-127, 127]), per output channel",
            "activations": "int8, symmetric (zero point 0), per tensor, from calibration ranges",
            "placement": "Q/DQ on the activation input and DQ on the weight of Conv, ConvTranspose, Gemm and "
                         "MatMul-with-initializer-weight nodes; no Q/DQ on their outputs, on biases, on "
                         "activation x activation MatMuls or on elementwise/normalisation ops (TensorRT "
                         "explicit-quantization placement)",
            "extra_options": dict(STATIC_OPTIONS),
        })
        if layout == "ort-cpu":
            recipe.update({
                "placement": "Q/DQ on the activation input and DQ on the weight of Conv, ConvTranspose, Gemm and "
                             "MatMul-with-initializer-weight nodes, plus one Q on the output of each Conv that is "
                             "not a graph output, int32 biases; one Q/DQ pair with its own scale/zero-point "
                             "initializers per reader of an activation; no Q/DQ on activation x activation "
                             "MatMuls or elementwise/normalisation ops (ONNX Runtime CPU placement: QLinearConv, "
                             "MatMulIntegerToFloat, QGemm)",
                "extra_options": dict(ORT_CPU_OPTIONS),
            })
    elif mode == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        _say(report, f"dynamic quantization of {len(chosen)} weighted nodes")
        ops = ["MatMul"]
        dyn = [w.name for w in chosen if w.op_type in ops]
        excluded.update({w.name: f"{w.op_type}: dynamic mode quantizes MatMul (Linear) only"
                         for w in chosen if w.op_type not in ops})
        chosen = [w for w in chosen if w.name in set(dyn)]
        with tempfile.TemporaryDirectory(prefix="ldm-quant-") as tmp, _quiet_logging():
            src = Path(tmp) / "model.onnx"
            save(typed, src, external=external)
            quantize_dynamic(src, onnx_out, op_types_to_quantize=ops, per_channel=True, reduce_range=False,
                             weight_type=QuantType.QInt8, nodes_to_quantize=dyn, use_external_data_format=external,
                             extra_options={"MatMulConstBOnly": True})
        files = [onnx_out.name] + [f.name for f in external_data_files(onnx_out)]
        recipe.update({
            "tool": "onnxruntime.quantization.quantize_dynamic",
            "format": "ORT integer ops (DynamicQuantizeLinear + MatMulInteger); ONNX Runtime only",
            "weights": "int8, symmetric, per output channel",
            "activations": "uint8, asymmetric, per tensor, range computed at run time on every call",
            "placement": "MatMul with an initializer weight (Linear layers); Conv and Gemm stay float",
        })
    else:
        _say(report, f"weight-only int8 on {len(chosen)} weighted nodes")
        targets = [(w.weight, w.axis, w.op_type) for w in chosen]
        tables = _gather_tables(typed) if embeddings else []
        model = _weight_only(copy.deepcopy(typed), targets + tables)
        files = save(model, onnx_out, external=external)
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

    ref = run_onnx(onnx_in, feeds, threads=threads) if feeds else []
    got = run_onnx(onnx_out, feeds, threads=threads) if feeds else []
    recipe.update({
        "quantized_nodes": [{"node": w.name, "op_type": w.op_type, "block": blocks[w.name], "weight": w.weight,
                             "weight_params": w.weight_params, "axis": w.axis} for w in chosen],
        "float_nodes": [{"node": w.name, "op_type": w.op_type, "block": blocks[w.name], "reason": excluded[w.name]}
                        for w in weighted if w.name in excluded],
        "activation_matmuls_float": other_matmuls,
        "exclude": list(exclude),
        "files": files,
        "size_bytes": {"fp32": model_size_bytes(onnx_in), "int8": model_size_bytes(onnx_out)},
        "vs_fp32": output_metrics(ref, got) if feeds else None,
        "seconds": round(time.perf_counter() - t0, 2),
    })
    return recipe
