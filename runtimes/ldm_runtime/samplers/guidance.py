"""Classifier-free guidance: Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. (6)."""

from __future__ import annotations

import numpy as np


def guidance(noise_uncond: np.ndarray, noise_text: np.ndarray, scale: float) -> np.ndarray:
    """ε_uncond + s · (ε_text − ε_uncond), in float32 and in this order, as diffusers' pipelines."""
    noise_uncond = np.asarray(noise_uncond, np.float32)
    noise_text = np.asarray(noise_text, np.float32)
    return (noise_uncond + np.float32(scale) * (noise_text - noise_uncond)).astype(np.float32)
