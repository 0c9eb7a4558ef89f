"""Static QDQ placement: where the Q/DQ nodes go, for TensorRT's explicit quantization (``tensorrt``) or for
ONNX Runtime's CPU integer kernels (``ort-cpu``); see :mod:`.int8`'s docstring for the reasoning."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from ldm_runtime.errors import UserError

from .calibrate import Calibration, _conv_outputs, _graph_output_convs
from .common import WEIGHTED_OPS, block_names

LAYOUTS = ("tensorrt", "ort-cpu")   # static Q/DQ placement: TensorRT explicit quantization / ORT CPU integer kernels
DEFAULT_LAYOUT = "tensorrt"


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
