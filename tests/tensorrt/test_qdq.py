"""int8 Q/DQ nodes against what TensorRT's explicit quantization takes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ldm_export.quantize import int8 as quantize_int8
from ldm_export.targets.tensorrt.qdq import WEIGHTED, check_qdq, require_tensorrt_qdq
from ldm_runtime.bundle import open_bundle
from ldm_runtime.errors import UserError
from ldm_runtime.verify import golden_tensors, load_golden


def _readers(model, tensor):
    return [(n, k) for n in model.graph.node for k, x in enumerate(n.input) if x == tensor]


def test_every_qdq_of_the_tiny_int8_bundle_is_symmetric_and_placed_for_tensorrt(tiny_int8_bundle):
    total = 0
    for path in sorted(tiny_int8_bundle.glob("*.onnx")):
        m = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        total += len(qdq)
        # the oracle, read straight off the graph: int8 zero points that are all 0 ...
        for n in qdq:
            assert len(n.input) == 3 and inits[n.input[2]].dtype == np.int8, (path.name, n.name)
            assert not inits[n.input[2]].any(), (path.name, n.name)
        # ... and every DequantizeLinear read by a weighted layer (or, for weight-only tables, a Gather)
        for n in (n for n in qdq if n.op_type == "DequantizeLinear"):
            readers = {r.op_type for r, _ in _readers(m, n.output[0])}
            assert readers <= set(WEIGHTED) | {"Gather"} and readers, (path.name, n.name, readers)
        report = check_qdq(m)
        assert report.violations == [], (path.name, report.violations[:3])
        assert len(report.findings) == len(qdq)
    assert total > 0
    roles = {p.stem: check_qdq(p).roles() for p in tiny_int8_bundle.glob("*.onnx")}
    assert set(roles["unet"]) == {"activation", "weight"}                 # int8-static: int8 kernels
    assert set(roles["text_encoder"]) == {"weight-only", "embedding table"}
    assert roles["vae_decoder"] == {}                                      # fp16, no Q/DQ


def test_the_ort_cpu_layout_is_reported_node_by_node(tiny_bundle, tmp_path):
    """ONNX Runtime's CPU layout (uint8 asymmetric activations, quantized Conv outputs) is not TensorRT's."""
    b = open_bundle(tiny_bundle)
    feeds = [golden_tensors(load_golden(b), "unet", "in")]
    out = tmp_path / "unet_ort_cpu.onnx"
    quantize_int8(b.path("unet.onnx"), out, feeds, mode="static", layout="ort-cpu")
    bad = check_qdq(out).violations
    problems = [p for f in bad for p in f.problems]
    assert "zero point type UINT8 (expected INT8, symmetric)" in problems   # uint8 asymmetric activations
    assert "weights stored as INT32; expected INT8" in problems             # int32 Conv biases
    # the DQ after each quantized Conv output feeds the next op (a normalization, an Add), not a weighted layer
    assert any(p.startswith("feeds input 0 of") and "(Conv)" not in p for p in problems)
    with pytest.raises(UserError, match=r"unet_ort_cpu.onnx: \d+ Q/DQ node\(s\).*--int8-layout tensorrt") as e:
        require_tensorrt_qdq(out)
    assert "\n" not in str(e.value) and f"'{bad[0].node}'" in str(e.value)


def _graph(nodes, inits, opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", opset)])


def _inits(zp=0, axis_len=8):
    return [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(zp), "zp"),
            numpy_helper.from_array(np.ones((8, 4, 3, 3), np.int8), "w_q"),
            numpy_helper.from_array(np.full(axis_len, 0.01, np.float32), "w_s"),
            numpy_helper.from_array(np.zeros(axis_len, np.int8), "w_zp")]


def test_handmade_misplacements_are_named():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_in"),
             helper.make_node("Add", ["xd", "x"], ["a"], name="add"),                      # DQ into an Add
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="dq_w", axis=1),
             helper.make_node("Conv", ["a", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    inits = _inits()
    inits[-2] = numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_s")           # axis 1 has 4 channels
    inits[-1] = numpy_helper.from_array(np.zeros(4, np.int8), "w_zp")
    found = {f.node: f for f in check_qdq(_graph(nodes, inits)).findings}
    assert "feeds input 0 of 'add' (Add)" in found["dq_in"].problems[0]
    assert found["dq_w"].role == "weight-only" and "axis 1; Conv weights need axis 0" in found["dq_w"].problems[0]
    assert found["q_in"].problems == ()


def test_asymmetric_zero_point_is_a_violation():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="dq_w", axis=0),
             helper.make_node("Conv", ["xd", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    found = {f.node: f for f in check_qdq(_graph(nodes, _inits(zp=3))).findings}
    assert "zero point is not 0 (asymmetric)" in found["q"].problems
    assert found["dq_w"].role == "weight" and found["dq_w"].problems == ()
