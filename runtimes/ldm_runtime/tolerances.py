"""Parity tolerances: one table per precision, each bound with its reason.

Used by ``ldm-run verify`` (bundle vs its golden vectors), by the build-time
check (ONNX Runtime vs torch) and by ``ldm-export parity`` (runtime vs diffusers).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    rel_l2: float        # ||runtime - reference|| / ||reference||
    min_cosine: float
    reason: str


@dataclass(frozen=True)
class ImageTolerance:
    max_uint8_diff: int  # largest per-channel difference of the final 8-bit image
    min_psnr_db: float
    reason: str


COMPONENT_TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "fp32": {
        "text_encoder": Tolerance(1e-4, 0.99999, "fp32 kernels differ only in summation order; "
                                  "layer norms keep errors ~1e-6 relative"),
        "unet": Tolerance(1e-4, 0.99999, "fp32 conv/attention reorderings in graph fusion give ~1e-6 relative"),
        "vae_decoder": Tolerance(1e-4, 0.99999, "deep conv stack in fp32; group norm bounds error growth"),
        "vae_encoder": Tolerance(1e-4, 0.99999, "same kernels as the decoder"),
        "class_embedder": Tolerance(1e-6, 0.999999, "a table lookup: exact up to the copy"),
    },
}

# Latent drift along the DDIM trajectory, per step (relative L2 against the reference latents).
TRAJECTORY_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(1e-3, 0.9999, "per-step fp32 errors (~1e-6) are amplified by guidance and "
                      "accumulate over steps; 1e-3 is still far below a visible change"),
}

IMAGE_TOLERANCES: dict[str, ImageTolerance] = {
    "fp32": ImageTolerance(2, 40.0, "fp32 end to end: rounding to 8 bits may flip a level or two "
                           "where the float image sits on a .5 boundary"),
}


def component_tolerance(precision: str, component: str) -> Tolerance:
    return COMPONENT_TOLERANCES[precision][component]
