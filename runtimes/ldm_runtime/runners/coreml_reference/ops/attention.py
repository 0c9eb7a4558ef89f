"""``scaled_dot_product_attention`` (iOS 18, the op coremltools fuses attention into for iOS 18 targets).

softmax(Q K^T / sqrt(E) + mask) V over the last two dimensions, as torch's ``scaled_dot_product_attention``
defines it; a bool mask keeps the positions where it is True. One fused op: float32 inside, one rounding of
the result (a device computes the fused op in one kernel too).
"""

from __future__ import annotations

import numpy as np

from .activations import softmax


def scaled_dot_product_attention(query, key, value, attn_mask=None):
    query, key, value = np.asarray(query), np.asarray(key), np.asarray(value)
    scores = np.matmul(query, np.swapaxes(key, -1, -2)) / np.sqrt(np.float32(query.shape[-1]))
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    return np.matmul(softmax(scores, axis=-1), value)


OPS = {"scaled_dot_product_attention": scaled_dot_product_attention}
