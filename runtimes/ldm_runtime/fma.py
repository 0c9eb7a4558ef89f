"""Correctly rounded float32 fused multiply-add in numpy: what torch's CPU kernels compute with ``vfmadd``
(its AVX2 ``randn`` transform, ``noise.py``; ``torch.linspace``, ``samplers/schedule.py``)."""

from __future__ import annotations

import numpy as np


def fma_float32(a, b, c) -> np.ndarray:
    """``a * b + c`` for float32 values, rounded once to float32 (like ``vfmadd``).

    The float64 product of two float32 values is exact. The float64 sum is made
    round-to-odd (TwoSum error term; if inexact and the last bit is even, step one
    ulp towards the error), after which one rounding to float32 is correct: 53 bits
    >= 24 + 2, so no double-rounding error is possible.
    """
    p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    c = np.asarray(c, np.float64)
    s = p + c
    bv = s - p
    err = (p - (s - bv)) + (c - bv)
    fix = (err != 0) & ((s.view(np.uint64) & 1) == 0)
    if fix.any():
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)
