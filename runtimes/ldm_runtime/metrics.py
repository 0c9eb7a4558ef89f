"""Parity metrics: small pure functions over arrays (float64 accumulation)."""

from __future__ import annotations

import math

import numpy as np


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return a, b


def max_abs(actual, expected) -> float:
    a, b = _pair(actual, expected)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def rel_l2(actual, expected) -> float:
    """||a - b|| / ||b||; 0 when both are zero, inf when only the reference is."""
    a, b = _pair(actual, expected)
    num, den = float(np.linalg.norm(a - b)), float(np.linalg.norm(b))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def cosine(actual, expected) -> float:
    a, b = _pair(actual, expected)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def psnr(actual, expected, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical inputs."""
    a, b = _pair(actual, expected)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def tensor_psnr(actual, expected) -> float:
    """PSNR in dB of a tensor against its reference, with the reference's largest magnitude as the peak.

    The measure used for quantized components (an UNet's noise prediction has no fixed range):
    ``10 log10(max|expected|^2 / mean((actual - expected)^2))``; ``-inf`` when ``actual`` has a NaN or Inf.
    """
    a, b = _pair(actual, expected)
    if not np.all(np.isfinite(a)):
        return -math.inf
    peak = float(np.max(np.abs(b))) if b.size else 0.0
    return psnr(actual, expected, peak) if peak > 0 else (math.inf if max_abs(actual, expected) == 0 else -math.inf)


def compare(actual, expected) -> dict[str, float]:
    """The standard triple reported for every component output."""
    return {"max_abs": max_abs(actual, expected), "rel_l2": rel_l2(actual, expected),
            "cosine": cosine(actual, expected)}
