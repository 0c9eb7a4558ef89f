"""Image-resizing MIL ops on the last two dimensions (nearest neighbour; bilinear modes are not in the
programs this project converts, and are left to the unknown-op error)."""

from __future__ import annotations

import math

import numpy as np


def _nearest(x, out_h: int, out_w: int, scale_h: float, scale_w: float):
    # output pixel i reads input pixel floor(i / scale), clamped to the input
    x = np.asarray(x)
    rows = np.minimum((np.arange(out_h) / scale_h).astype(np.int64), x.shape[-2] - 1)
    cols = np.minimum((np.arange(out_w) / scale_w).astype(np.int64), x.shape[-1] - 1)
    return x[..., rows[:, None], cols[None, :]]


def upsample_nearest_neighbor(x, scale_factor_height=1, scale_factor_width=1):
    # H2 = floor(H1 * scale_factor_height), W2 = floor(W1 * scale_factor_width)
    h, w = np.shape(x)[-2:]
    sh, sw = float(scale_factor_height), float(scale_factor_width)
    return _nearest(x, math.floor(h * sh), math.floor(w * sw), sh, sw)


def resize_nearest_neighbor(x, target_size_height, target_size_width):
    h, w = np.shape(x)[-2:]
    th, tw = int(target_size_height), int(target_size_width)
    return _nearest(x, th, tw, th / h, tw / w)


OPS = {"upsample_nearest_neighbor": upsample_nearest_neighbor, "resize_nearest_neighbor": resize_nearest_neighbor}
