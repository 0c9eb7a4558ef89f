"""Linear MIL ops: ``linear``, ``matmul`` and ``conv`` (1-3 spatial dimensions).

Products and sums in float32 (BLAS through numpy); the evaluator rounds the result to the declared dtype
(float32 accumulation, one rounding to fp16 for fp16 programs).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

IM2COL_BYTES = 64 << 20   # conv works on blocks of output rows whose unfolded input stays under this


def linear(x, weight, bias=None):
    # y = x W^T + b, W: [D_out, D_in]
    y = np.matmul(x, np.asarray(weight).T)
    return y if bias is None else y + bias


def matmul(x, y, transpose_x=False, transpose_y=False):
    x, y = np.asarray(x), np.asarray(y)
    if transpose_x and x.ndim > 1:
        x = np.swapaxes(x, -1, -2)
    if transpose_y and y.ndim > 1:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _pads(pad_type: str, pad, size, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(before, after) per spatial dimension, for MIL's pad types."""
    n = len(size)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        pad = [int(p) for p in (pad if pad is not None else [0] * 2 * n)]
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    if pad_type not in ("same", "same_lower"):
        raise ValueError(f"conv pad_type '{pad_type}'")
    out = []
    for d, k, s, r in zip(size, kernel, strides, dilations):
        # output ceil(d / s); the odd pixel goes after ("same") or before ("same_lower")
        total = max((math.ceil(d / s) - 1) * s + (k - 1) * r + 1 - d, 0)
        small, large = total // 2, total - total // 2
        out.append((small, large) if pad_type == "same" else (large, small))
    return out


def conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    """Cross-correlation, NC[D]HW input, weight [C_out, C_in / groups, *K] (im2col + matmul)."""
    x, weight = np.asarray(x), np.asarray(weight)
    n_sp, kernel = x.ndim - 2, weight.shape[2:]
    strides = [int(s) for s in strides] if strides is not None else [1] * n_sp
    dilations = [int(d) for d in dilations] if dilations is not None else [1] * n_sp
    pads = _pads(pad_type, pad, x.shape[2:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0)] + pads)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    win = sliding_window_view(x, span, axis=tuple(range(2, 2 + n_sp)))  # [N, C, *positions, *span]
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
              + tuple(slice(None, None, d) for d in dilations)]          # [N, C, *out, *K]
    groups = int(groups)
    c_in, c_out = x.shape[1] // groups, weight.shape[0] // groups
    out_shape = win.shape[2:2 + n_sp]
    y = np.empty((x.shape[0], weight.shape[0], *out_shape), dtype=np.result_type(x, weight))
    row_bytes = x.shape[0] * c_in * math.prod(kernel) * math.prod(out_shape[1:]) * y.itemsize
    rows = max(1, IM2COL_BYTES // max(row_bytes, 1))
    order = (0, *range(2, 2 + n_sp), 1, *range(2 + n_sp, 2 + 2 * n_sp))  # [N, *out, C, *K]
    for g in range(groups):
        w = weight[g * c_out:(g + 1) * c_out].reshape(c_out, -1).T
        for r0 in range(0, out_shape[0], rows):
            block = win[:, g * c_in:(g + 1) * c_in, r0:r0 + rows].transpose(order)
            cols = block.reshape(-1, w.shape[0]) @ w                       # [N * rows * ..., C_out / groups]
            y[:, g * c_out:(g + 1) * c_out, r0:r0 + rows] = np.moveaxis(
                cols.reshape(*block.shape[:1 + n_sp], c_out), -1, 1)
    if bias is not None:
        y += np.asarray(bias).reshape((1, -1) + (1,) * n_sp)
    return y


OPS = {"linear": linear, "matmul": matmul, "conv": conv}
