"""Compressed-weight MIL ops (``constexpr_*``): the weights are decompressed here, in numpy.

* ``constexpr_lut_to_dense`` (palettization). iOS 16: ``indices`` is a uint8 vector of n-bit indices packed
  least significant bit first, ``lut`` one palette of 2^n values, ``shape`` the output shape. iOS 18:
  ``indices`` come unpacked in the output's shape and ``lut`` has shape ``[*groups, 2^n, vector_size]``:
  the palette of an element is the one of its block (block size = indices.shape / lut.shape[:-2]).
* ``constexpr_affine_dequantize`` (iOS 16 linear quantization): ``scale * (data - zero_point)``, scale and
  zero point scalars or vectors along ``axis``.
* ``constexpr_blockwise_shift_scale`` (iOS 18): ``scale * (data - offset)`` with one scale (and offset) per
  block, block size = data.shape / scale.shape.
* ``constexpr_cast``: fp16 constants widened to fp32.
"""

from __future__ import annotations

import numpy as np


def unpack_bits(packed, nbits: int, count: int) -> np.ndarray:
    """``count`` unsigned ``nbits``-bit integers from a little-endian bit stream (MIL's sub-byte layout)."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[:count * nbits]
    weights = (1 << np.arange(nbits)).astype(np.uint16)
    return (bits.reshape(count, nbits).astype(np.uint16) @ weights).astype(np.uint8)


def _blocks(small, shape) -> np.ndarray:
    """Repeat each entry of ``small`` over its block, to ``shape`` (each dimension divides evenly)."""
    small = np.asarray(small)
    for axis, (n, m) in enumerate(zip(shape, small.shape)):
        if m != n:
            small = np.repeat(small, n // m, axis=axis)
    return small


def lut_to_dense(indices, lut, shape=None, vector_axis=None):
    lut = np.asarray(lut)
    if shape is not None:  # iOS 16: one palette, packed indices
        nbits = int(np.log2(lut.size))
        count = int(np.prod(shape))
        return lut[unpack_bits(indices, nbits, count)].reshape([int(s) for s in shape])
    indices = np.asarray(indices).astype(np.int64)
    if lut.shape[-1] != 1:
        raise NotImplementedError(f"constexpr_lut_to_dense with vector palettes (vector size {lut.shape[-1]})")
    # 1. the palette of every element: its block's palette, [*indices.shape, 2^n]
    palettes = lut[..., 0]
    groups = palettes.shape[:-1]
    block_of = [np.arange(n) // (n // g) for n, g in zip(indices.shape, groups)]
    grid = np.ix_(*block_of)
    # 2. the value at each element's index in its palette
    return palettes[grid + (indices,)]


def affine_dequantize(quantized_data, zero_point, scale, axis):
    # scale * (data - zero_point); vectors lie along ``axis``
    data = np.asarray(quantized_data).astype(np.float32)
    shape = [1] * data.ndim
    shape[int(axis)] = -1

    def along(v):
        v = np.asarray(v, dtype=np.float32)
        return v.reshape(shape) if v.ndim == 1 else v

    return along(scale) * (data - along(zero_point))


def blockwise_shift_scale(data, scale, offset=None):
    # scale * (data - offset), one scale (and offset) per block
    data = np.asarray(data).astype(np.float32)
    if offset is not None:
        data = data - _blocks(np.asarray(offset, dtype=np.float32), data.shape)
    return _blocks(np.asarray(scale, dtype=np.float32), data.shape) * data


def constexpr_cast(source_val, output_dtype="fp32"):
    return np.asarray(source_val, dtype=np.float32)


OPS = {
    "constexpr_lut_to_dense": lut_to_dense, "constexpr_affine_dequantize": affine_dequantize,
    "constexpr_blockwise_shift_scale": blockwise_shift_scale, "constexpr_cast": constexpr_cast,
}
