"""Pooling MIL ops (iOS15 ``pool``): windows over 1-3 spatial dimensions, as ``conv`` lays them out."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .linear import _pads


def _ceil_extra(d: int, before: int, after: int, k: int, s: int) -> int:
    """Padding that ceil mode adds at the end: out = ceil((d + pads - k) / s) + 1, less one when the last
    window would start in the end padding (coremltools' rule)."""
    out = -(-(d + before + after - k) // s) + 1
    if (out - 1) * s >= d + before:
        out -= 1
    return max(0, (out - 1) * s + k - (d + before + after))


def _windows(x, kernel_sizes, strides, pad_type, pad, ceil_mode, fill):
    """[N, C, *out, *K] windows of ``x`` padded with ``fill``, and the mask of real (unpadded) elements."""
    x = np.asarray(x)
    n_sp = x.ndim - 2
    kernel = [int(k) for k in kernel_sizes]
    strides = [int(s) for s in strides] if strides is not None else [1] * n_sp
    pads = _pads(pad_type, pad, x.shape[2:], kernel, strides, [1] * n_sp)
    if ceil_mode:
        pads = [(b, a + _ceil_extra(d, b, a, k, s)) for (b, a), d, k, s in zip(pads, x.shape[2:], kernel, strides)]
    widths = [(0, 0), (0, 0)] + pads
    axes = tuple(range(2, 2 + n_sp))
    step = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
    win = sliding_window_view(np.pad(x, widths, constant_values=fill), kernel, axis=axes)[step]
    real = sliding_window_view(np.pad(np.ones(x.shape[2:], bool), pads), kernel)[step[2:]]
    return win, real, n_sp


def avg_pool(x, kernel_sizes, pad_type="valid", strides=None, pad=None, exclude_padding_from_average=False,
             ceil_mode=False):
    win, real, n_sp = _windows(x, kernel_sizes, strides, pad_type, pad, ceil_mode, 0.0)
    axes = tuple(range(-n_sp, 0))
    total = np.sum(win, axis=axes)
    count = np.sum(real, axis=axes) if exclude_padding_from_average else math.prod(win.shape[-n_sp:])
    return total / count


def max_pool(x, kernel_sizes, pad_type="valid", strides=None, pad=None, ceil_mode=False):
    win, _, n_sp = _windows(x, kernel_sizes, strides, pad_type, pad, ceil_mode, -np.inf)
    return np.max(win, axis=tuple(range(-n_sp, 0)))


OPS = {"avg_pool": avg_pool, "max_pool": max_pool}
