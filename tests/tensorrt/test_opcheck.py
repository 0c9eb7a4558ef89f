"""The static check against TensorRT's ONNX parser: per node, per TensorRT version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ldm_export.precision import component_recipe, quantize_component
from ldm_export.targets.tensorrt.opcheck import check_graph, parser_support, unsupported_nodes
from ldm_runtime.bundle import open_bundle
from ldm_runtime.errors import UserError
from ldm_runtime.verify import golden_tensors, load_golden


def _model(nodes, inputs, outputs, opset, inits=(), check=True):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", opset)])
    if check:  # a valid graph: the refusals below are the parser's, not ONNX's
        onnx.checker.check_model(m, full_check=True)
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def group_norm(opset: int, name: str = "down.0.norm1"):
    """GroupNormalization-21 (scale and bias per channel) or -18 (per group; the ONNX checker refuses
    it as deprecated since onnx 1.16, so that one is not checked)."""
    n = 4 if opset >= 21 else 2
    scale = numpy_helper.from_array(np.ones(n, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(n, np.float32), "bias")
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], name=name, num_groups=2)
    return _model([node], [_vi("x", [1, 4, 8, 8])], [_vi("y", [1, 4, 8, 8])], opset, [scale, bias],
                  check=opset >= 21)


def attention(name: str = "mid.attn1"):
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name=name)
    shape = [1, 2, 16, 8]   # (batch, heads, sequence, head size): 4-D, as TensorRT's importer requires
    return _model([node], [_vi("q", shape), _vi("k", shape), _vi("v", shape)], [_vi("y", shape)], 23)


def test_opset21_group_norm_is_refused_by_10_3_by_name_and_taken_from_10_9():
    (bad,) = unsupported_nodes(group_norm(21, "up.1.resnets.0.norm2"), "10.3")
    assert (bad.node, bad.op_type, bad.domain, bad.opset) == ("up.1.resnets.0.norm2", "GroupNormalization",
                                                              "ai.onnx", 21)
    assert bad.first_supported.short == "10.9"
    assert unsupported_nodes(group_norm(21), "10.9") == []
    assert unsupported_nodes(group_norm(18), "10.3") == []   # GroupNormalization-18 parses since 8.6


def test_attention_is_refused_by_10_3_by_name_and_taken_from_10_14():
    (bad,) = unsupported_nodes(attention("mid_block.attentions.0"), "10.3")
    assert (bad.node, bad.op_type, bad.opset) == ("mid_block.attentions.0", "Attention", 23)
    assert bad.first_supported.short == "10.14"
    assert unsupported_nodes(attention(), "10.13") != [] and unsupported_nodes(attention(), "10.14") == []


def test_refusal_is_one_line_naming_each_node(tmp_path):
    gn = group_norm(21, "gn_a")
    gn.graph.node.append(helper.make_node("GroupNormalization", ["y", "scale", "bias"], ["z"], name="gn_b",
                                          num_groups=2))
    gn.graph.output[0].CopyFrom(_vi("z", [1, 4, 8, 8]))
    onnx.save(gn, tmp_path / "unet.onnx")
    with pytest.raises(UserError) as e:
        check_graph(tmp_path / "unet.onnx", "10.3")
    msg = str(e.value)
    assert "\n" not in msg and "'gn_a' (GroupNormalization, ai.onnx opset 21" in msg and "'gn_b'" in msg
    assert "2 node(s)" in msg and "--min-tensorrt 10.9" in msg
    check_graph(tmp_path / "unet.onnx", "10.9")   # the same graph passes for the version that parses it


def test_other_domains_and_nested_graphs_are_checked():
    custom = helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="ort_fused", domain="com.microsoft")
    m = helper.make_model(helper.make_graph([custom], "g", [_vi("x", [4, 4])], [_vi("y", [4, 4])]),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    (bad,) = unsupported_nodes(m, "10.3")
    assert (bad.node, bad.domain) == ("ort_fused", "com.microsoft") and "plugin" in bad.reason
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="fine")], "then", [], [_vi("y", [4])])
    other = helper.make_graph([helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="custom", domain="com.ms")],
                              "else", [], [_vi("y", [4])])
    outer = helper.make_model(helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), _vi("x", [4])], [_vi("y", [4])]),
        opset_imports=[helper.make_opsetid("", 17)])
    assert [(b.node, b.domain) for b in unsupported_nodes(outer, "10.3")] == [("branch/else_branch/custom", "com.ms")]


def test_table_rows_grow_monotonically():
    assert parser_support("10.3").max_opset == 20 and parser_support("10.15").max_opset == 24
    assert parser_support("10.3").ops <= parser_support("10.9").ops <= parser_support("11.5").ops
    assert "STFT" not in parser_support("10.4").ops and "STFT" in parser_support("10.5").ops


def _quantized_graphs(bundle_dir: Path, out: Path) -> list[Path]:
    """Every component of the bundle through the fp16 and the int8 recipe of ldm-export build
    (quantize_component, calibrated on the bundle's golden inputs). A component whose int8 recipe is
    its fp16 one (the autoencoder) is the same graph and is made once."""
    b = open_bundle(bundle_dir)
    golden = load_golden(b)
    made = []
    for name, spec in b.manifest["components"].items():
        recipes = {component_recipe(p, name) for p in ("fp16", "int8")} - {"fp32"}
        for recipe in sorted(recipes):
            target = out / recipe / f"{name}.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            quantize_component(recipe, b.path(spec["file"]), target, [golden_tensors(golden, name, "in")])
            made.append(target)
    return made


def _assert_parse_on_10_3(graphs: list[Path]) -> set[str]:
    ops: set[str] = set()
    for path in graphs:
        bad = unsupported_nodes(path, "10.3")
        assert bad == [], (path, [b.describe() for b in bad])
        ops |= {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return ops


def test_every_family_fp32_export_and_a_real_int8_bundle_parse_on_10_3(family_bundles, tiny_int8_bundle):
    graphs = [p for b in family_bundles.values() for p in sorted(b.glob("*.onnx"))]
    assert len(graphs) >= 3 * len(family_bundles)
    ops = _assert_parse_on_10_3(graphs + sorted(tiny_int8_bundle.glob("*.onnx")))
    assert {"QuantizeLinear", "DequantizeLinear", "Cast"} <= ops   # the int8 bundle's Q/DQ and fp16 islands
    assert "GroupNormalization" not in ops and "Attention" not in ops


@pytest.mark.slow
def test_every_family_fp16_and_int8_graphs_parse_on_10_3(family_bundles, tmp_path):
    """Every family's components through the fp16 and int8 recipes (about 5 minutes on 2 cores)."""
    graphs = [g for name, b in family_bundles.items() for g in _quantized_graphs(b, tmp_path / name)]
    ops = _assert_parse_on_10_3(graphs)
    assert {"QuantizeLinear", "DequantizeLinear", "Cast"} <= ops
