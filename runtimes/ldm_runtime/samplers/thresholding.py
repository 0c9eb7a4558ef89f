"""Dynamic thresholding of the predicted x_0: Saharia et al. 2022 (Imagen), section 2.3.

"At each sampling step we set s to a certain percentile absolute pixel value in x̂_0^t,
and if s > 1, then we threshold x̂_0^t to the range [−s, s] and then divide by s."
diffusers' DDIM and DPM-Solver schedulers share this ``_threshold_sample``.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

_F32 = np.float32


def threshold_sample(sample: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Clip x_0 to [-s, s] and divide by s, per batch item; s is the ``ratio`` quantile of |x_0|,
    clamped to [1, max_value]."""
    batch = sample.shape[0]
    flat = np.abs(sample.reshape(batch, -1))
    # 1. s: torch.quantile's "linear" interpolation, in float32 like torch
    ranks = _F32(ratio) * _F32(flat.shape[1] - 1)
    below = int(np.floor(ranks))
    above = min(below + 1, flat.shape[1] - 1)
    weight = ranks - _F32(below)
    ordered = np.sort(flat, axis=1)
    lo, hi = ordered[:, below], ordered[:, above]
    s = lo + weight * (hi - lo) if weight < 0.5 else hi - (hi - lo) * (_F32(1.0) - weight)
    # 2. "when clamped to min=1, equivalent to standard clipping to [-1, 1]"
    s = np.clip(s, _F32(1.0), _F32(max_value))[:, None]
    # 3. threshold to [-s, s], then divide by s
    return (np.clip(sample.reshape(batch, -1), -s, s) / s).reshape(sample.shape).astype(np.float32)


def check_thresholding_ratio(ratio: float) -> None:
    if not (0.0 < ratio <= 1.0):
        raise UserError(f"bad dynamic_thresholding_ratio; got {ratio!r}; expected a value in (0, 1]")
