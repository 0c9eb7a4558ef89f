"""Decompression of compressed weights (``constexpr_*`` ops) against coremltools' own decompression code,
through one-op programs (the weight feeds an ``add`` with a zero input, as a weight feeds a conv)."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_runtime.runners.coreml_reference.ops.constexpr import unpack_bits

from .mil import run


def _target(name):
    import coremltools as ct

    return getattr(ct.target, name)


def _types():
    from coremltools.converters.mil.mil import types

    return types


def _through_add(make_weight, shape, opset):
    """Evaluate ``weight + 0`` where weight = make_weight(mb); returns the dense weight the evaluator used."""
    return run(lambda mb, dt, a: mb.add(x=a, y=make_weight(mb)), [np.zeros(shape, np.float16)], opset)[0]


@pytest.mark.parametrize("nbits", [1, 2, 4, 6, 8])
def test_unpack_bits_inverts_coremltools_packing(nbits):
    from coremltools.optimize import _utils

    values = np.random.default_rng(nbits).integers(0, 2**nbits, 37).astype(np.uint8)
    packed = _utils.pack_elements_into_bits(values, nbits)
    np.testing.assert_array_equal(unpack_bits(packed, nbits, values.size), values)


@pytest.mark.parametrize("nbits", [2, 4, 6])
def test_lut_to_dense_ios16(nbits):
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_lut_to_dense
    from coremltools.optimize import _utils

    rng = np.random.default_rng(0)
    shape = (6, 5, 3)
    lut = rng.standard_normal(2**nbits).astype(np.float16)
    indices = _utils.pack_elements_into_bits(rng.integers(0, 2**nbits, int(np.prod(shape))).astype(np.uint8), nbits)
    got = _through_add(lambda mb: mb.constexpr_lut_to_dense(indices=indices, lut=lut,
                                                            shape=np.array(shape, np.uint32)), shape, _target("iOS17"))
    want = constexpr_lut_to_dense.decompress(lut, indices, np.array(shape, np.uint32))
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_lut_to_dense_ios18_grouped_palettes():
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_lut_to_dense

    rng = np.random.default_rng(1)
    shape = (8, 6)                                          # 4 groups of 2 output channels, 4-bit palettes
    indices = rng.integers(0, 16, shape).astype(_types().np_uint4_dtype)
    lut = rng.standard_normal((4, 1, 16, 1)).astype(np.float16)
    got = _through_add(lambda mb: mb.constexpr_lut_to_dense(indices=indices, lut=lut), shape, _target("iOS18"))
    want = constexpr_lut_to_dense.decompress(indices, lut, None)
    np.testing.assert_array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("axis", [0, 1])
def test_affine_dequantize(axis):
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_affine_dequantize

    rng = np.random.default_rng(2)
    q = rng.integers(-128, 128, (4, 5)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, q.shape[axis]).astype(np.float16)
    zero = rng.integers(-3, 3, q.shape[axis]).astype(np.int8)
    got = _through_add(lambda mb: mb.constexpr_affine_dequantize(quantized_data=q, zero_point=zero, scale=scale,
                                                                 axis=axis), q.shape, _target("iOS17"))
    want = constexpr_affine_dequantize.decompress(q, zero, scale, axis).astype(np.float16)
    np.testing.assert_array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("kind", ["int8", "int4_offset"])
def test_blockwise_shift_scale(kind):
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_blockwise_shift_scale

    rng = np.random.default_rng(3)
    shape, blocks = (4, 8), (4, 2)                          # blocks of 4 input channels
    if kind == "int8":
        data, offset = rng.integers(-128, 128, shape).astype(np.int8), None
    else:
        data = rng.integers(-8, 8, shape).astype(_types().np_int4_dtype)
        offset = rng.integers(-2, 2, blocks).astype(_types().np_int4_dtype)
    scale = rng.uniform(0.01, 0.1, blocks).astype(np.float16)
    got = _through_add(lambda mb: mb.constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset),
                       shape, _target("iOS18"))
    want = constexpr_blockwise_shift_scale.decompress(data, scale, offset).astype(np.float16)
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_constexpr_cast():
    w = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float16)
    got = run(lambda mb, dt, a: mb.add(x=a, y=mb.constexpr_cast(source_val=w, output_dtype="fp32")),
              [np.zeros((3, 4), np.float32)], _target("iOS17"))[0]
    np.testing.assert_array_equal(got, w.astype(np.float32))
