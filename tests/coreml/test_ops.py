"""Every kernel of the reference evaluator, one MIL op at a time, in fp32 and in fp16 arithmetic.

Oracles, independent of the kernels: coremltools' own value inference (its numpy reference of the op) where
it exists, torch where coremltools has none (conv, norms, silu, pooling, resizing), coremltools' own
decompression for the constexpr ops, and a few formulas written out here. fp32 programs must match to float32
rounding; fp16 programs must return fp16 values within one fp16 ulp of the oracle rounded to fp16 (exactly
for +, -, *, /, sqrt and the ops that only move values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from .mil import is_fp16_valued, run, ulps, value_inference

F16, F32 = np.float16, np.float32


def _torch():
    return pytest.importorskip("torch")


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable                    # (mb, dt, *inputs) -> output var(s)
    inputs: Callable                   # (rng) -> list of float32 / int32 / bool arrays
    oracle: Callable | str = "value"   # "value" (coremltools value inference) or (float64 inputs) -> outputs
    fp16_ulps: float = 1.0             # 0: the fp16 result must be the correctly rounded oracle
    opset: str | None = None
    n_const: int = 0                   # the last inputs are constants (weights, biases, gamma, beta)


def normal(*shape):
    return lambda rng: [rng.standard_normal(shape).astype(F32)]


def normals(*shapes):
    return lambda rng: [rng.standard_normal(s).astype(F32) for s in shapes]


def positive(*shape):
    return lambda rng: [rng.uniform(0.1, 4.0, shape).astype(F32)]


def _t(x):
    return _torch().from_numpy(np.asarray(x, np.float64))


def _np(t):
    return t.numpy()


BINARY = [("add", 0), ("sub", 0), ("mul", 0), ("real_div", 0), ("maximum", 0), ("minimum", 0), ("pow", 1)]
COMPARE = ["equal", "not_equal", "less", "less_equal", "greater", "greater_equal"]
UNARY = [("abs", 0), ("ceil", 0), ("floor", 0), ("round", 0), ("sign", 0), ("exp", 1), ("exp2", 1), ("sin", 1),
         ("cos", 1), ("tan", 1), ("tanh", 1), ("square", 0), ("erf", 1), ("sigmoid", 1), ("softplus", 1),
         ("relu", 0), ("relu6", 0), ("softsign", 1)]

CASES = [
    *[Case(op, lambda mb, dt, a, b, op=op: getattr(mb, op)(x=a, y=b),
           (lambda rng: [rng.uniform(0.5, 2, (3, 4)).astype(F32), rng.uniform(0.5, 2, (4,)).astype(F32)])
           if op == "pow" else (lambda rng: [rng.standard_normal((3, 4)).astype(F32),
                                            rng.uniform(0.5, 2, (1, 4)).astype(F32)]), fp16_ulps=u)
      for op, u in BINARY],
    Case("floor_div", lambda mb, dt, a, b: mb.floor_div(x=a, y=b),
         lambda rng: [rng.uniform(-9, 9, (5,)).astype(F32), rng.uniform(0.5, 3, (5,)).astype(F32)], fp16_ulps=0),
    Case("floor_div_int", lambda mb, dt, a, b: mb.floor_div(x=a, y=b),
         lambda rng: [np.array([7, -7, 9, 2], np.int32), np.array([2, 2, 4, 3], np.int32)]),
    Case("real_div_int", lambda mb, dt, a, b: mb.real_div(x=a, y=b),
         lambda rng: [np.array([8, 9, 6], np.int32), np.array([2, 3, 6], np.int32)],
         oracle=lambda a, b: [a // b]),
    Case("mod", lambda mb, dt, a, b: mb.mod(x=a, y=b),
         lambda rng: [rng.uniform(-5, 5, (6,)).astype(F32), rng.uniform(1, 3, (6,)).astype(F32)]),
    *[Case(op, lambda mb, dt, a, b, op=op: getattr(mb, op)(x=a, y=b),
           lambda rng: [rng.integers(0, 3, (2, 3)).astype(F32), rng.integers(0, 3, (2, 3)).astype(F32)])
      for op in COMPARE],
    *[Case(op, lambda mb, dt, a, b, op=op: getattr(mb, op)(x=a, y=b),
           lambda rng: [rng.random((2, 3)) > 0.5, rng.random((2, 3)) > 0.5]) for op in
      ("logical_and", "logical_or", "logical_xor")],
    Case("logical_not", lambda mb, dt, a: mb.logical_not(x=a), lambda rng: [rng.random((4,)) > 0.5]),
    *[Case(op, lambda mb, dt, a, op=op: getattr(mb, op)(x=a), normal(2, 5), fp16_ulps=u) for op, u in UNARY],
    Case("sqrt", lambda mb, dt, a: mb.sqrt(x=a), positive(2, 5), fp16_ulps=0),
    Case("rsqrt", lambda mb, dt, a: mb.rsqrt(x=a), positive(2, 5)),
    Case("log", lambda mb, dt, a: mb.log(x=a), positive(2, 5)),
    Case("inverse", lambda mb, dt, a: mb.inverse(x=a, epsilon=dt(1e-3)), positive(7)),
    Case("clip", lambda mb, dt, a: mb.clip(x=a, alpha=dt(-0.5), beta=dt(0.7)), normal(9), fp16_ulps=0),
    Case("threshold", lambda mb, dt, a: mb.threshold(x=a, alpha=dt(0.25)), normal(9), fp16_ulps=0),
    Case("select", lambda mb, dt, c, a, b: mb.select(cond=c, a=a, b=b),
         lambda rng: [rng.random((3, 4)) > 0.5, *[rng.standard_normal((3, 4)).astype(F32)] * 2], fp16_ulps=0),
    Case("cast_to_int", lambda mb, dt, a: mb.cast(x=a, dtype="int32"),
         lambda rng: [np.array([-2.7, -0.5, 0.4, 3.9], F32)]),
    Case("cast_to_fp16", lambda mb, dt, a: mb.cast(x=a, dtype="fp16"), normal(6), fp16_ulps=0),
    # activations (coremltools has no value inference for silu: torch)
    Case("silu", lambda mb, dt, a: mb.silu(x=a), normal(3, 4),
         oracle=lambda a: [_np(_torch().nn.functional.silu(_t(a)))]),
    *[Case(f"gelu_{m.lower()}", lambda mb, dt, a, m=m: mb.gelu(x=a, mode=m), normal(3, 8)) for m in
      ("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION")],
    Case("gelu_vs_torch", lambda mb, dt, a: mb.gelu(x=a), lambda rng: [np.linspace(-6, 6, 49, dtype=F32)],
         oracle=lambda a: [_np(_torch().nn.functional.gelu(_t(a)))]),
    Case("softmax", lambda mb, dt, a: mb.softmax(x=a, axis=1), normal(2, 7, 3)),
    Case("leaky_relu", lambda mb, dt, a: mb.leaky_relu(x=a, alpha=dt(0.1)), normal(8)),
    Case("elu", lambda mb, dt, a: mb.elu(x=a, alpha=dt(0.7)), normal(8)),
    Case("clamped_relu", lambda mb, dt, a: mb.clamped_relu(x=a, alpha=dt(0.2), beta=dt(1.5)), normal(8)),
    Case("prelu", lambda mb, dt, a: mb.prelu(x=a, alpha=dt(np.array([0.1, 0.2, 0.3]))), normal(2, 3, 4, 2)),
    Case("sigmoid_hard", lambda mb, dt, a: mb.sigmoid_hard(x=a, alpha=dt(0.3), beta=dt(0.4)), normal(8)),
    Case("linear_activation", lambda mb, dt, a: mb.linear_activation(x=a, alpha=dt(1.5), beta=dt(-0.5)), normal(8)),
    Case("scaled_tanh", lambda mb, dt, a: mb.scaled_tanh(x=a, alpha=dt(1.5), beta=dt(0.5)), normal(8)),
    Case("thresholded_relu", lambda mb, dt, a: mb.thresholded_relu(x=a, alpha=dt(0.3)), normal(8)),
    # linear algebra (float32 accumulation, one rounding)
    Case("linear", lambda mb, dt, a, w, b: mb.linear(x=a, weight=w, bias=b), normals((2, 3, 16), (5, 16), (5,)),
         oracle=lambda a, w, b: [a @ w.T + b], n_const=2),
    Case("matmul", lambda mb, dt, a, b: mb.matmul(x=a, y=b), normals((2, 1, 3, 16), (4, 16, 5))),
    Case("sdpa", lambda mb, dt, q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v),
         normals((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4)), opset="iOS18"),
    Case("sdpa_vs_torch_bool_mask", lambda mb, dt, q, k, v, m: mb.scaled_dot_product_attention(
        query=q, key=k, value=v, attn_mask=m),
        lambda rng: [*[rng.standard_normal(s).astype(F32) for s in ((1, 2, 5, 8), (1, 2, 6, 8), (1, 2, 6, 3))],
                     np.tril(np.ones((5, 6), bool))],
        oracle=lambda q, k, v, m: [_np(_torch().nn.functional.scaled_dot_product_attention(
            _t(q), _t(k), _t(v), attn_mask=_torch().from_numpy(m)))], opset="iOS18"),
    Case("matmul_transposed", lambda mb, dt, a, b: mb.matmul(x=a, y=b, transpose_x=True, transpose_y=True),
         normals((2, 16, 3), (2, 5, 16))),
]


def _conv(stride=1, pad=(1, 1, 1, 1), dilation=1, groups=1, pad_type="custom"):
    def build(mb, dt, x, w, b):
        return mb.conv(x=x, weight=w, bias=b, strides=[stride, stride], pad_type=pad_type,
                       pad=list(pad) if pad_type == "custom" else None, dilations=[dilation, dilation],
                       groups=groups)

    def oracle(x, w, b):
        t = _torch()
        xp = t.nn.functional.pad(_t(x), (pad[2], pad[3], pad[0], pad[1])) if pad_type == "custom" else _t(x)
        return [_np(t.nn.functional.conv2d(xp, _t(w), _t(b), stride=stride, dilation=dilation, groups=groups,
                                           padding="same" if pad_type == "same" else 0))]

    return build, oracle


CONVS = {"3x3": {}, "stride2_asym": dict(stride=2, pad=(0, 1, 1, 0)), "dilated": dict(dilation=2, pad=(2, 2, 2, 2)),
         "groups": dict(groups=2), "valid": dict(pad_type="valid", pad=(0, 0, 0, 0)),
         "same": dict(pad_type="same", pad=(0, 0, 0, 0))}
for _name, _kw in CONVS.items():
    _b, _o = _conv(**_kw)
    CASES.append(Case(f"conv_{_name}", _b, normals((2, 4, 9, 7), (6, 4 // _kw.get("groups", 1), 3, 3), (6,)),
                      oracle=_o, n_const=2))
CASES += [
    Case("conv1d", lambda mb, dt, x, w: mb.conv(x=x, weight=w, pad_type="custom", pad=[2, 0]),
         normals((1, 3, 10), (4, 3, 3)),
         oracle=lambda x, w: [_np(_torch().nn.functional.conv1d(_torch().nn.functional.pad(_t(x), (2, 0)), _t(w)))],
         n_const=1),
    # normalization
    Case("layer_norm", lambda mb, dt, a, g, b: mb.layer_norm(x=a, axes=[-1], gamma=g, beta=b, epsilon=dt(1e-5)),
         normals((2, 3, 8), (8,), (8,)), n_const=2),
    Case("layer_norm_axes", lambda mb, dt, a: mb.layer_norm(x=a, axes=[1, 2]), normal(2, 3, 4)),
    Case("batch_norm", lambda mb, dt, x, m, v, g, b: mb.batch_norm(x=x, mean=m, variance=v, gamma=g, beta=b,
                                                                   epsilon=dt(1e-3)),
         lambda rng: [rng.standard_normal((2, 3, 4, 4)).astype(F32), rng.standard_normal(3).astype(F32),
                      rng.uniform(0.5, 2, 3).astype(F32), *rng.standard_normal((2, 3)).astype(F32)],
         oracle=lambda x, m, v, g, b: [_np(_torch().nn.functional.batch_norm(_t(x), _t(m), _t(v), _t(g), _t(b),
                                                                          eps=1e-3))], n_const=4),
    Case("instance_norm", lambda mb, dt, x, g, b: mb.instance_norm(x=x, gamma=g, beta=b),
         normals((2, 3, 5, 4), (3,), (3,)),
         oracle=lambda x, g, b: [_np(_torch().nn.functional.instance_norm(_t(x), weight=_t(g), bias=_t(b),
                                                                          eps=1e-5))], n_const=2),
    Case("l2_norm", lambda mb, dt, a: mb.l2_norm(x=a), normal(2, 3, 4, 5)),
    # reductions
    *[Case(op, lambda mb, dt, a, op=op: getattr(mb, op)(x=a, axes=[1, -1], keep_dims=k), positive(2, 3, 4))
      for op in ("reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_sum_square",
                 "reduce_l1_norm", "reduce_l2_norm", "reduce_log_sum", "reduce_log_sum_exp") for k in (True,)],
    Case("reduce_mean_all", lambda mb, dt, a: mb.reduce_mean(x=a), normal(3, 4)),
    Case("reduce_argmax", lambda mb, dt, a: mb.reduce_argmax(x=a, axis=1, keep_dims=True), normal(3, 5)),
    Case("reduce_argmin", lambda mb, dt, a: mb.reduce_argmin(x=a, axis=-1), normal(3, 5)),
]

# shape and tensor manipulation: values only move, so fp16 results are exact
MOVE = [
    Case("reshape", lambda mb, dt, a: mb.reshape(x=a, shape=[0, -1, 2]), normal(2, 3, 4)),
    Case("reshape_dynamic", lambda mb, dt, a: mb.reshape(x=a, shape=mb.concat(
        values=[np.array([-1], np.int32), mb.slice_by_index(x=mb.shape(x=a), begin=[2], end=[3])], axis=0)),
         normal(2, 3, 4), oracle=lambda a: [a.reshape(-1, 4)]),
    Case("transpose", lambda mb, dt, a: mb.transpose(x=a, perm=[2, 0, 1]), normal(2, 3, 4)),
    Case("expand_dims", lambda mb, dt, a: mb.expand_dims(x=a, axes=[0, -1]), normal(2, 3)),
    Case("squeeze", lambda mb, dt, a: mb.squeeze(x=a, axes=[1]), normal(2, 1, 3)),
    Case("concat", lambda mb, dt, a, b: mb.concat(values=[a, b], axis=1), normals((2, 3), (2, 2))),
    Case("concat_interleave", lambda mb, dt, a, b: mb.concat(values=[a, b], axis=1, interleave=True),
         normals((2, 3), (2, 3)), oracle=lambda a, b: [np.stack([a, b], axis=2).reshape(2, 6)]),
    Case("stack", lambda mb, dt, a, b: mb.stack(values=[a, b], axis=1), normals((2, 3), (2, 3))),
    Case("split_sizes", lambda mb, dt, a: mb.split(x=a, split_sizes=[1, 3], axis=1), normal(2, 4)),
    Case("split_num", lambda mb, dt, a: mb.split(x=a, num_splits=2, axis=0), normal(4, 3)),
    Case("slice_by_index", lambda mb, dt, a: mb.slice_by_index(x=a, begin=[1, 0, 3], end=[2, 0, 0],
                                                               end_mask=[False, True, True], stride=[1, 2, -1]),
         normal(3, 4, 5)),
    Case("slice_squeeze", lambda mb, dt, a: mb.slice_by_index(x=a, begin=[0, 2], end=[2, 3],
                                                              squeeze_mask=[False, True]), normal(3, 4)),
    Case("slice_by_size", lambda mb, dt, a: mb.slice_by_size(x=a, begin=[1, 0], size=[2, -1]), normal(4, 3)),
    Case("gather", lambda mb, dt, a, i: mb.gather(x=a, indices=i, axis=1),
         lambda rng: [rng.standard_normal((2, 5, 3)).astype(F32), np.array([[4, 0], [2, -1]], np.int32)],
         oracle=lambda a, i: [np.take(a, i, axis=1)]),
    Case("gather_batch_dims", lambda mb, dt, a, i: mb.gather(x=a, indices=i, axis=1, batch_dims=1),
         lambda rng: [rng.standard_normal((2, 5, 3)).astype(F32), np.array([[4, 0], [2, 1]], np.int32)],
         oracle=lambda a, i: [np.stack([a[0][i[0]], a[1][i[1]]])], opset="iOS17"),
    Case("gather_along_axis", lambda mb, dt, a, i: mb.gather_along_axis(x=a, indices=i, axis=0),
         lambda rng: [rng.standard_normal((3, 4)).astype(F32), rng.integers(0, 3, (2, 4)).astype(np.int32)]),
    Case("tile", lambda mb, dt, a: mb.tile(x=a, reps=[2, 1, 3]), normal(1, 2, 3)),
    *[Case(f"pad_{m}", lambda mb, dt, a, m=m: mb.pad(x=a, pad=[1, 2, 2, 1], mode=m), normal(2, 3, 4),
           oracle=lambda a, m=m: [np.pad(a, [(0, 0), (1, 2), (2, 1)],
                                         mode={"constant": "constant", "reflect": "reflect", "replicate": "edge"}[m])])
      for m in ("constant", "reflect", "replicate")],
    Case("shape", lambda mb, dt, a: mb.shape(x=a), normal(2, 3, 4), oracle=lambda a: [np.array(a.shape)]),
    Case("fill", lambda mb, dt, a: mb.fill(shape=mb.shape(x=a), value=dt(2.5)), normal(2, 3),
         oracle=lambda a: [np.full(a.shape, 2.5)]),
    Case("range_1d", lambda mb, dt, a: mb.range_1d(start=dt(1), end=dt(2.5), step=dt(0.25)), normal(1),
         oracle=lambda a: [np.arange(1, 2.5, 0.25)]),
    Case("identity", lambda mb, dt, a: mb.identity(x=a), normal(3)),
    Case("flatten2d", lambda mb, dt, a: mb.flatten2d(x=a, axis=2), normal(2, 3, 4, 5)),
    Case("reverse", lambda mb, dt, a: mb.reverse(x=a, axes=[0, 2]), normal(2, 3, 4)),
    # resizing and pooling (torch)
    Case("upsample_nearest", lambda mb, dt, a: mb.upsample_nearest_neighbor(x=a, scale_factor_height=2,
                                                                            scale_factor_width=3),
         normal(1, 2, 3, 4),
         oracle=lambda a: [_np(_torch().nn.functional.interpolate(_t(a), scale_factor=(2, 3), mode="nearest"))]),
    Case("resize_nearest", lambda mb, dt, a: mb.resize_nearest_neighbor(x=a, target_size_height=7,
                                                                        target_size_width=4),
         normal(1, 2, 3, 4),
         oracle=lambda a: [_np(_torch().nn.functional.interpolate(_t(a), size=(7, 4), mode="nearest"))]),
    Case("avg_pool", lambda mb, dt, a: mb.avg_pool(x=a, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid"),
         normal(2, 3, 6, 8), oracle=lambda a: [_np(_torch().nn.functional.avg_pool2d(_t(a), 2))]),
    Case("avg_pool_exclude_pad", lambda mb, dt, a: mb.avg_pool(
        x=a, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1],
        exclude_padding_from_average=True), normal(1, 2, 7, 6),
        oracle=lambda a: [_np(_torch().nn.functional.avg_pool2d(_t(a), 3, 2, 1, count_include_pad=False))]),
    Case("max_pool_ceil", lambda mb, dt, a: mb.max_pool(x=a, kernel_sizes=[3, 3], strides=[2, 2],
                                                        pad_type="valid", ceil_mode=True),
         normal(1, 2, 8, 7), oracle=lambda a: [_np(_torch().nn.functional.max_pool2d(_t(a), 3, 2, ceil_mode=True))]),
]
CASES += [Case(c.id, c.build, c.inputs, c.oracle, 0.0, c.opset, c.n_const) for c in MOVE]


def _opset(case: Case):
    import coremltools as ct

    return getattr(ct.target, case.opset) if case.opset else None


def _expected(case: Case, inputs: list[np.ndarray]) -> list[np.ndarray]:
    wide = [x.astype(F32) if x.dtype == F16 else x for x in inputs]
    if case.oracle == "value":
        # an fp16 program holds its float constants (alpha, epsilon ...) in fp16: the oracle takes the same values
        halved = any(x.dtype == F16 for x in inputs)
        return value_inference(case.build, wide, _opset(case), dt=(lambda v: F32(F16(v))) if halved else None)
    return [np.asarray(e) for e in case.oracle(*[x.astype(np.float64) if x.dtype.kind == "f" else x
                                                 for x in wide])]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_fp32(case):
    inputs = case.inputs(np.random.default_rng(0))
    got, want = run(case.build, inputs, _opset(case), n_const=case.n_const), _expected(case, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        np.testing.assert_allclose(g, w.astype(np.float64), rtol=2e-6, atol=2e-6 * max(scale, 1e-30))


@pytest.mark.parametrize("case", [c for c in CASES if c.fp16_ulps is not None], ids=lambda c: c.id)
def test_op_fp16(case):
    """fp16 inputs (where the op takes floats), fp16 arithmetic: results are fp16 values, within the case's ulps
    of the oracle (computed from the same fp16 values in float64) rounded to fp16."""
    inputs = [x.astype(F16) if x.dtype == F32 else x for x in case.inputs(np.random.default_rng(1))]
    got = run(case.build, inputs, _opset(case), n_const=case.n_const)
    want = _expected(case, inputs)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        if w.dtype.kind != "f" or not any(x.dtype == F16 for x in inputs):
            np.testing.assert_array_equal(g, w)
            continue
        assert is_fp16_valued(g), "an fp16 op returned values that are not fp16"
        assert ulps(g, w.astype(F16)) <= case.fp16_ulps
