"""Quantization recipes on tiny ONNX graphs: fp16 overflow/error scan, int8 static/dynamic/weight-only,
mixed precision to a PSNR target, and the helpers."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from ldm_export.onnx_io import model_size_bytes, save
from ldm_export.quantize import fp16, int8, mixed, output_metrics, output_psnr, run_onnx
from ldm_export.quantize.common import block_names
from ldm_runtime.errors import UserError

T = 1  # ORT intra-op threads: the test machine is shared


def _export(module: torch.nn.Module, args: tuple, names: list[str], path: Path, dynamic: dict | None = None) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=names, output_names=["out"], opset_version=17,
                          dynamic_axes=dynamic, dynamo=False)
    return path


def _json(recipe: dict) -> dict:
    """The recipe survives strict JSON (no NaN/Infinity literals, no numpy types)."""
    return json.loads(json.dumps(recipe, allow_nan=False))


def _finite(outputs) -> bool:
    return all(np.all(np.isfinite(v)) for o in outputs for v in o.values())


# ----------------------------------------------------------------------------------------------- models

class Planted(torch.nn.Module):
    """A Linear whose activations exceed the fp16 range, followed by LayerNorm: the output is moderate."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.big, self.norm, self.fc2 = (torch.nn.Linear(16, 32), torch.nn.Linear(32, 32),
                                                   torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))
        with torch.no_grad():
            self.big.weight.mul_(3e5)

    def forward(self, x):
        return self.fc2(self.norm(self.big(torch.nn.functional.gelu(self.fc1(x)))))


class TimeEmbedding(torch.nn.Module):
    """Sinusoidal embedding of timesteps near 1000: sin/cos of arguments fp16 cannot represent finely."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(16) / 16))
        self.proj = torch.nn.Linear(32, 16)

    def forward(self, t):
        a = t[:, None] * self.freqs[None]
        return self.proj(torch.cat([torch.sin(a), torch.cos(a)], dim=-1))


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = torch.nn.functional.silu(self.conv1(x))
        return torch.nn.functional.silu(self.conv2(h)) + h  # h: read by conv2 (int8) and by the residual Add


class Attention(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(c, c) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        t = x.flatten(2).transpose(1, 2)
        s = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2) / math.sqrt(c), dim=-1)  # activation x activation
        t = torch.tanh(self.o(s @ self.v(t)))
        return x + t.transpose(1, 2).reshape(b, c, hh, ww)


class ConvNet(torch.nn.Module):
    """Conv-heavy, with an attention in the middle and structured node names (blocks.N/...)."""

    def __init__(self, c=48):
        super().__init__()
        torch.manual_seed(0)
        self.conv_in = torch.nn.Conv2d(4, c, 3, padding=1)
        self.blocks = torch.nn.ModuleList([Block(c), Block(c)])
        self.attn = Attention(c)
        self.conv_out = torch.nn.Conv2d(c, 4, 3, padding=1)

    def forward(self, x):
        h = torch.nn.functional.silu(self.conv_in(x))
        h = self.attn(self.blocks[0](h))
        return self.conv_out(torch.nn.functional.silu(self.blocks[1](h)))


class TextLayer(torch.nn.Module):
    """Pre-norm transformer layer as CLIP writes it (q/k/v/out projections, quick-GELU MLP)."""

    def __init__(self, d):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.norm1(x)
        a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(h.shape[-1]), dim=-1)
        x = x + self.o(a @ self.v(h))
        h = self.fc1(self.norm2(x))
        return x + self.fc2(h * torch.sigmoid(1.702 * h))


class TinyText(torch.nn.Module):
    """CLIP-like: token + position embeddings, two transformer layers, final LayerNorm."""

    def __init__(self, vocab=400, d=64, n=16):
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.pos = torch.nn.Embedding(vocab, d), torch.nn.Embedding(n, d)
        self.layers = torch.nn.ModuleList([TextLayer(d) for _ in range(2)])
        self.norm = torch.nn.LayerNorm(d)

    def forward(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1])[None])
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quant")


@pytest.fixture(scope="module")
def planted(work) -> Path:
    return _export(Planted(), (torch.randn(2, 4, 16),), ["x"], work / "planted.onnx")


@pytest.fixture(scope="module")
def convnet(work) -> Path:
    return _export(ConvNet(), (torch.randn(2, 4, 8, 8),), ["x"], work / "convnet.onnx", {"x": {0: "b"}})


@pytest.fixture(scope="module")
def conv_feeds():
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((2, 4, 8, 8)).astype(np.float32)} for _ in range(8)]


@pytest.fixture(scope="module")
def text(work) -> Path:
    return _export(TinyText(), (torch.randint(0, 400, (1, 16)),), ["ids"], work / "text.onnx", {"ids": {0: "b"}})


def _planted_feeds():
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((2, 4, 16)).astype(np.float32)} for _ in range(4)]


# ----------------------------------------------------------------------------------------------- fp16

def test_fp16_scan_keeps_the_planted_overflow_in_fp32(planted, work):
    feeds = _planted_feeds()
    ref = run_onnx(planted, feeds, threads=T)
    scanned = _json(fp16(planted, work / "planted_scan.onnx", feeds, threads=T))
    kept = {k["node"]: k for k in scanned["kept_fp32"]}
    assert "/big/MatMul" in kept and kept["/big/MatMul"]["reason"] == "range"
    assert kept["/big/MatMul"]["max_abs"] > 65504
    assert "/norm/LayerNormalization" in kept  # reads the out-of-range tensor
    assert "/fc1/MatMul" not in kept and "/fc2/MatMul" not in kept
    got = run_onnx(work / "planted_scan.onnx", feeds, threads=T)
    assert _finite(got)
    m = output_metrics(ref, got)
    assert m["cosine"] > 0.9999 and m["rel_l2"] < 5e-3
    # fp16 inside, fp32 outside
    model = onnx.load(str(work / "planted_scan.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)

    plain = _json(fp16(planted, work / "planted_plain.onnx", feeds, scan=False, threads=T))
    assert plain["kept_fp32"] == []
    assert not _finite(run_onnx(work / "planted_plain.onnx", feeds, threads=T))
    assert plain["vs_fp32"]["finite"] is False


def test_fp16_error_scan_keeps_the_timestep_embedding_in_fp32(work):
    path = _export(TimeEmbedding(), (torch.tensor([999.0, 501.0]),), ["t"], work / "temb.onnx", {"t": {0: "b"}})
    feeds = [{"t": np.array([999.0, 981.0, 761.0, 501.0], np.float32) - k} for k in range(4)]
    ref = run_onnx(path, feeds, threads=T)
    plain = fp16(path, work / "temb_plain.onnx", feeds, scan=False, threads=T)
    scanned = _json(fp16(path, work / "temb_scan.onnx", feeds, threads=T))
    reasons = {k["node"]: k["reason"] for k in scanned["kept_fp32"]}
    assert any(r == "fp16 error" for r in reasons.values()), reasons
    assert {"/Sin", "/Cos"} <= set(reasons)
    assert any(r.startswith("fp16 input of") for r in reasons.values())  # the argument is kept in fp32 as well
    e_plain = output_metrics(ref, run_onnx(work / "temb_plain.onnx", feeds, threads=T))["rel_l2"]
    e_scan = output_metrics(ref, run_onnx(work / "temb_scan.onnx", feeds, threads=T))["rel_l2"]
    assert e_plain > 3e-3 and e_scan < e_plain / 5
    assert plain["vs_fp32"]["rel_l2"] == pytest.approx(e_plain, rel=1e-6)


def test_fp16_keeps_external_data(planted, work):
    src = work / "ext" / "planted.onnx"
    save(onnx.load(str(planted)), src, external=True)
    assert (work / "ext" / "planted.onnx.data").exists()
    recipe = fp16(src, work / "ext" / "planted_fp16.onnx", _planted_feeds(), threads=T)
    data = work / "ext" / "planted_fp16.onnx.data"
    assert recipe["files"] == ["planted_fp16.onnx", "planted_fp16.onnx.data"] and data.exists()
    out = work / "ext" / "planted_fp16.onnx"
    assert model_size_bytes(out) == out.stat().st_size + data.stat().st_size
    assert _finite(run_onnx(out, _planted_feeds(), threads=T))


# ----------------------------------------------------------------------------------------------- int8

def _producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def test_int8_static_places_qdq_for_tensorrt(convnet, conv_feeds, work):
    out = work / "convnet_int8.onnx"
    recipe = _json(int8(convnet, out, conv_feeds, threads=T))
    model = onnx.load(str(out))
    prod = _producers(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    src_inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(convnet)).graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type == "Conv" or (
        n.op_type == "MatMul" and n.input[1] in prod and prod[n.input[1]].op_type == "DequantizeLinear"
        and prod[n.input[1]].input[0] in inits)]
    assert len(weighted) == 6 + 4 == len(recipe["quantized_nodes"])
    for n in weighted:
        wdq = prod[n.input[1]]
        assert wdq.op_type == "DequantizeLinear"
        w, scale, zp = (inits[i] for i in wdq.input)
        axis = next(a.i for a in wdq.attribute if a.name == "axis")
        assert w.dtype == np.int8 and zp.dtype == np.int8 and not zp.any()
        assert np.abs(w).max() <= 127
        out_channels = w.shape[0] if n.op_type == "Conv" else w.shape[1]
        assert axis == (0 if n.op_type == "Conv" else 1) and scale.shape == (out_channels,)
        adq = prod[n.input[0]]
        assert adq.op_type == "DequantizeLinear" and prod[adq.input[0]].op_type == "QuantizeLinear"
        assert inits[adq.input[1]].size == 1 and inits[adq.input[2]].dtype == np.int8 and not inits[adq.input[2]].any()
        if len(n.input) > 2:  # bias stays float
            assert n.input[2] in src_inits and inits[n.input[2]].dtype == np.float32
    # attention scores and attention x values: no Q/DQ
    act = [n for n in model.graph.node if n.op_type == "MatMul" and n not in weighted]
    assert len(act) == 2 and recipe["activation_matmuls_float"] == [n.name for n in act]
    for n in act:
        assert all(prod[i].op_type != "DequantizeLinear" for i in n.input if i in prod)
    # no Q/DQ on the weighted nodes' outputs; the residual Add reads the float tensor conv2 reads quantized
    q_inputs = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert not q_inputs & {o for n in weighted for o in n.output}
    add = next(n for n in model.graph.node if n.name == "/blocks.0/Add")
    assert all(prod[i].op_type != "DequantizeLinear" for i in add.input)
    assert model_size_bytes(out) < 0.35 * model_size_bytes(convnet)
    assert recipe["size_bytes"]["int8"] == model_size_bytes(out)
    got, ref = run_onnx(out, conv_feeds, threads=T), run_onnx(convnet, conv_feeds, threads=T)
    assert output_metrics(ref, got)["cosine"] > 0.99
    assert recipe["calibration"]["method"] == "minmax" and recipe["calibration"]["feeds"] == len(conv_feeds)


def test_int8_static_exclude_by_block(convnet, conv_feeds, work):
    out = work / "convnet_int8_ex.onnx"
    recipe = int8(convnet, out, conv_feeds, exclude=["blocks.1", "/conv_out/Conv"], threads=T)
    floats = {n["node"] for n in recipe["float_nodes"]}
    assert floats == {"/blocks.1/conv1/Conv", "/blocks.1/conv2/Conv", "/conv_out/Conv"}
    model = onnx.load(str(out))
    prod = _producers(model)
    for n in model.graph.node:
        if n.name in floats:
            assert all(prod[i].op_type != "DequantizeLinear" for i in n.input if i in prod)
    with pytest.raises(UserError, match="nope"):
        int8(convnet, work / "x.onnx", conv_feeds, exclude=["nope"], threads=T)


def _ids(n=6):
    rng = np.random.default_rng(1)
    return [{"ids": rng.integers(0, 400, (2, 16)).astype(np.int64)} for _ in range(n)]


@pytest.mark.parametrize("mode", ["weight_only", "dynamic"])
def test_int8_text_encoder_modes(text, work, mode):
    feeds = _ids()
    out = work / f"text_{mode}.onnx"
    recipe = _json(int8(text, out, feeds, mode=mode, threads=T))
    ref, got = run_onnx(text, feeds, threads=T), run_onnx(out, feeds, threads=T)
    m = output_metrics(ref, got)
    assert m["cosine"] > 0.99 and recipe["vs_fp32"]["cosine"] == pytest.approx(m["cosine"])
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    if mode == "weight_only":
        assert "QuantizeLinear" not in ops and "DequantizeLinear" in ops  # float activations, int8 weights
        assert recipe["embedding_tables"]  # the token/position tables are int8 too
        assert model_size_bytes(out) < 0.35 * model_size_bytes(text)
    else:
        assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
        assert model_size_bytes(out) < 0.6 * model_size_bytes(text)


# ----------------------------------------------------------------------------------------------- mixed

def test_mixed_meets_a_reachable_target(convnet, conv_feeds, work):
    all_int8 = int8(convnet, work / "all.onnx", conv_feeds, threads=T)["vs_fp32"]["psnr_db"]
    target = all_int8 + 6.0
    out = work / "mixed.onnx"
    recipe = _json(mixed(convnet, out, conv_feeds, target_psnr=target, max_fp32_fraction=1.0, threads=T))
    ref, got = run_onnx(convnet, conv_feeds, threads=T), run_onnx(out, conv_feeds, threads=T)
    assert output_psnr(ref, got) >= target and recipe["met"]
    assert recipe["psnr_db"] == pytest.approx(output_psnr(ref, got), abs=1e-3)
    assert recipe["fp32_blocks"], "the target needs some blocks in fp32"
    blocks = {b["block"]: b for b in recipe["blocks"]}
    assert set(blocks) == {"conv_in", "blocks.0", "blocks.1", "attn/q", "attn/k", "attn/v", "attn/o", "conv_out"}
    assert all(isinstance(b["sensitivity_psnr_db"], (float, str)) for b in blocks.values())
    assert {b for b, v in blocks.items() if v["precision"] == "fp32"} == set(recipe["fp32_blocks"])
    prod = _producers(onnx.load(str(out)))
    model = onnx.load(str(out))
    for n in model.graph.node:
        in_fp32 = any(n.name in blocks[b]["nodes"] for b in recipe["fp32_blocks"])
        quantized = n.input and n.input[0] in prod and prod[n.input[0]].op_type == "DequantizeLinear"
        if any(n.name in b["nodes"] for b in blocks.values()):
            assert bool(quantized) != in_fp32, n.name


def test_mixed_unreachable_target_says_how_close_it_got(convnet, conv_feeds, work):
    with pytest.raises(UserError) as e:
        mixed(convnet, work / "never.onnx", conv_feeds, target_psnr=200.0, max_fp32_fraction=0.1, threads=T)
    msg = str(e.value)
    assert "\n" not in msg and "200 dB" in msg
    best = float(re.search(r"best (-?\d+\.\d+) dB", msg).group(1))
    assert 10 < best < 200
    assert not (work / "never.onnx").exists()


# ----------------------------------------------------------------------------------------------- helpers

def test_output_psnr_definition():
    ref = np.linspace(-2, 4, 60, dtype=np.float32).reshape(3, 20)
    got = ref + 0.1
    assert output_psnr(ref, got) == pytest.approx(10 * math.log10(16 / 0.01), rel=1e-5)
    assert output_psnr([{"a": ref}], [{"a": ref}]) == math.inf
    bad = got.copy()
    bad[0, 0] = np.nan
    assert output_psnr(ref, bad) == -math.inf


def test_block_names_from_torch_scopes():
    names = ["/m/conv_in/Conv", "/m/time_embedding/linear_1/Gemm", "/m/down_blocks.0/resnets.0/conv1/Conv",
             "/m/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul",
             "/m/down_blocks.0/attentions.0/proj_in/Conv", "/m/mid_block/attentions.0/proj_in/Conv",
             "/m/mid_block/attentions.0/transformer_blocks.0/ff/net.2/MatMul", "Conv_12"]
    assert block_names(names) == {
        "/m/conv_in/Conv": "conv_in", "/m/time_embedding/linear_1/Gemm": "time_embedding/linear_1",
        "/m/down_blocks.0/resnets.0/conv1/Conv": "down_blocks.0/resnets.0",
        "/m/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul": "down_blocks.0/attentions.0",
        "/m/down_blocks.0/attentions.0/proj_in/Conv": "down_blocks.0/attentions.0",
        "/m/mid_block/attentions.0/proj_in/Conv": "mid_block/attentions.0",
        "/m/mid_block/attentions.0/transformer_blocks.0/ff/net.2/MatMul": "mid_block/attentions.0",
        "Conv_12": "Conv_12"}


def _ort_optimized_ops(path: Path, work: Path) -> dict:
    """Op types of the graph ONNX Runtime's CPU provider runs (ORT_ENABLE_ALL), from optimized_model_filepath."""
    import collections

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(work / f"{path.stem}.ort-optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def test_int8_ort_cpu_layout_runs_integer_kernels(convnet, conv_feeds, work):
    trt = work / "convnet_int8_trt.onnx"
    cpu = work / "convnet_int8_cpu.onnx"
    r_trt = int8(convnet, trt, conv_feeds, threads=T)
    r_cpu = _json(int8(convnet, cpu, conv_feeds, layout="ort-cpu", threads=T))
    assert r_trt["layout"] == "tensorrt" and r_cpu["layout"] == "ort-cpu"
    ops_trt, ops_cpu = _ort_optimized_ops(trt, work), _ort_optimized_ops(cpu, work)
    # tensorrt layout: every Conv stays float on ORT CPU; ort-cpu: all but conv_out (graph output) are QLinearConv
    assert ops_trt["QLinearConv"] == 0 and ops_trt["Conv"] == 6
    assert ops_cpu["QLinearConv"] == 5 and ops_cpu["Conv"] == 1
    # q/k/v read one DQ in the tensorrt layout (one fused); with a pair per reader all four Linear MatMuls fuse
    assert ops_cpu["MatMulIntegerToFloat"] == 4 > ops_trt["MatMulIntegerToFloat"]
    assert [n["node"] for n in r_cpu["float_nodes"]] == ["/conv_out/Conv"]
    model = onnx.load(str(cpu))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    prod = _producers(model)
    conv = next(n for n in model.graph.node if n.name == "/blocks.0/conv1/Conv")
    assert inits[prod[conv.input[2]].input[0]].dtype == np.int32                  # int32 bias
    readers = [n for n in model.graph.node if conv.output[0] in n.input]
    assert [n.op_type for n in readers] == ["QuantizeLinear"]                       # one Q on the output
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    params = [i for n in qdq if n.input[0] not in inits for i in n.input[1:]]
    assert len(params) == len(set(params))                                          # no shared scale/zero point
    got, ref = run_onnx(cpu, conv_feeds, threads=T), run_onnx(convnet, conv_feeds, threads=T)
    assert output_metrics(ref, got)["cosine"] > 0.98
    assert model_size_bytes(cpu) < 0.35 * model_size_bytes(convnet)
    with pytest.raises(UserError, match="layout"):
        int8(convnet, work / "x.onnx", conv_feeds, layout="gpu", threads=T)



def test_mixed_passes_the_layout_through(convnet, conv_feeds, work):
    out = work / "convnet_mixed_cpu.onnx"
    recipe = mixed(convnet, out, conv_feeds, target_psnr=20.0, layout="ort-cpu", threads=T)
    assert recipe["layout"] == "ort-cpu" and recipe["met"]
    assert _ort_optimized_ops(out, work)["QLinearConv"] > 0
