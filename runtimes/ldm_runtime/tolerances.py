"""Parity tolerances: one table per precision, each bound with its reason.

Two questions, two kinds of table:

* **Does this device run the bundle as it was built?** ``COMPONENT_TOLERANCES``,
  ``TRAJECTORY_TOLERANCES`` and ``IMAGE_TOLERANCES``, per precision: ``ldm-run verify``
  against the bundle's own golden vectors, and the build-time check of each fp32
  export (ONNX Runtime vs torch). For fp32 the golden vectors are torch's outputs, so
  the same tables also bound ``ldm-export parity`` (runtime vs diffusers).
* **How far is a quantized bundle from the fp32 model it came from?**
  ``QUALITY_TARGETS``: PSNR floors against fp32 torch, per precision, used by
  ``ldm-export parity`` and the build report of fp16/int8/mixed bundles. A
  quantized bundle's golden vectors are its own outputs (recorded at build time on
  ONNX Runtime's CPU provider), so verify can be tight while the quality gap to
  fp32 is judged separately.
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

_FP16 = Tolerance(1e-2, 0.9999, "fp16 compute: another provider (CUDA/TensorRT/Core ML fp16 kernels, fp16 "
                  "accumulation) rounds differently from the CPU provider that recorded the golden "
                  "vectors; fp16 has ~1e-3 relative precision per op")
_INT8 = Tolerance(5e-2, 0.998, "int8 kernels differ in requantisation rounding and in where a provider fuses "
                  "Q/DQ pairs; one int8 level is ~1/127 of a tensor's range")
COMPONENT_TOLERANCES["fp16"] = {name: _FP16 for name in COMPONENT_TOLERANCES["fp32"]}
COMPONENT_TOLERANCES["fp16"]["class_embedder"] = COMPONENT_TOLERANCES["fp32"]["class_embedder"]
# int8 and mixed bundles: int8 UNet (static QDQ) and text encoder (int8 weights), fp16 autoencoder.
COMPONENT_TOLERANCES["int8"] = {**COMPONENT_TOLERANCES["fp16"], "unet": _INT8}
COMPONENT_TOLERANCES["mixed"] = COMPONENT_TOLERANCES["int8"]

# Latent drift along the DDIM trajectory, per step (relative L2 against the reference latents).
TRAJECTORY_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(1e-3, 0.9999, "per-step fp32 errors (~1e-6) are amplified by guidance and "
                      "accumulate over steps; 1e-3 is still far below a visible change"),
    "fp16": Tolerance(3e-2, 0.9995, "fp16 per-step differences between providers (~1e-3) grow with guidance "
                      "over the golden trajectory's few steps"),
    "int8": Tolerance(1e-1, 0.995, "int8 per-step differences between providers (~1e-2) grow with guidance "
                      "over the golden trajectory's few steps"),
}
TRAJECTORY_TOLERANCES["mixed"] = TRAJECTORY_TOLERANCES["int8"]

IMAGE_TOLERANCES: dict[str, ImageTolerance] = {
    "fp32": ImageTolerance(2, 40.0, "fp32 end to end: rounding to 8 bits may flip a level or two "
                           "where the float image sits on a .5 boundary"),
    "fp16": ImageTolerance(32, 32.0, "fp16 on another provider: a few levels on most pixels, more at edges"),
    "int8": ImageTolerance(64, 26.0, "int8 on another provider: latent differences of ~1e-2 show as a few "
                           "levels, up to a quarter of the range on high-contrast edges"),
}
IMAGE_TOLERANCES["mixed"] = IMAGE_TOLERANCES["int8"]


@dataclass(frozen=True)
class QualityTarget:
    component_psnr_db: float | None   # every component output vs fp32 torch (peak = max |reference|)
    image_psnr_db: float              # final 8-bit image vs the fp32 torch pipeline, same seed
    reason: str


QUALITY_TARGETS: dict[str, QualityTarget] = {
    "fp32": QualityTarget(None, IMAGE_TOLERANCES["fp32"].min_psnr_db, "fp32 is bounded by the tables above"),
    "fp16": QualityTarget(35.0, 30.0, "fp16 keeps ~3 decimal digits per op; the overflow scan keeps the ops "
                          "that would leave its range in fp32, so no component may fall below 35 dB"),
    "int8": QualityTarget(None, 22.0, "an int8 UNet changes fine detail along the trajectory (the sampler "
                          "amplifies small errors), but the image must keep its content: >= 22 dB"),
    "mixed": QualityTarget(None, 22.0, "the UNet meets the build's --target-psnr on calibration data (recorded "
                           "in the manifest); the final image as for int8"),
    # Core ML weight compression on top of the fp16 programs (quantization.compression): the weights change, the
    # arithmetic does not; targets against fp32 torch, as for the precisions above.
    # Measured (docs/coreml.md): demo UNet / text encoder / golden image, tiny SD the same.
    "palettize-6": QualityTarget(35.0, 22.0, "6-bit palettes lose ~30 dB of fp16's precision per component "
                                 "(demo UNet 40.9, text encoder 47.8 dB; tiny SD 44.6 / 45.0): under 35 dB (the fp16 "
                                 "gate) a palette is broken. The sampler amplifies the weight error along the "
                                 "trajectory (demo, 50 steps: median 35.5 dB, min 18.4 dB over 32 images, adherence "
                                 "kept), so the image is bounded as for int8"),
    "palettize-4": QualityTarget(None, 22.0, "4-bit palettes change the UNet visibly (demo UNet 27.5 dB, text "
                                 "encoder 33.2 dB, image 26.4 dB): as for an int8 UNet, only the image's content "
                                 "is bounded"),
    "palettize-mixed": QualityTarget(None, 22.0, "the UNet meets the build's --target-psnr on calibration records "
                                     "(recorded in the manifest; demo at 35 dB: 38.2 dB, two blocks at 6 bits, "
                                     "image 29.8 dB); the image as for 4 bits"),
    "int8-weights": QualityTarget(40.0, 22.0, "int8 weights per output channel: demo UNet 49.3, text encoder "
                                  "60.4 dB, golden image 40.1 dB; tiny SD 56.3 / 54.4, 55.5 dB; under 40 dB a channel's "
                                  "scale is wrong. Along a long trajectory the image as for 6-bit palettes"),
}


def quality_target(precision: str) -> QualityTarget:
    return QUALITY_TARGETS[precision]


def quality_key(manifest: dict) -> str:
    """The quality target a bundle is judged by: its weight compression's (Core ML palettization or int8
    weights, ``quantization.compression``) when it has one, else its precision's."""
    return (manifest.get("quantization") or {}).get("compression") or manifest["precision"]


def bundle_quality_target(manifest: dict) -> QualityTarget:
    return QUALITY_TARGETS[quality_key(manifest)]


def component_tolerance(precision: str, component: str) -> Tolerance:
    return COMPONENT_TOLERANCES[precision][component]
