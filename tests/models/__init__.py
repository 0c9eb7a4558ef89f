"""The tests' model registry: every tiny model, what it stands for, and how to make it.

After Polygraphy's ``tests/models``: one place that names each test model. A model is a
random-weight diffusers (or our own ``LDMClassConditionalPipeline``) folder with a real
architecture, built in seconds, deterministic in its seed, with no hub access.

    from tests.models import MODELS, make
    folder = make("tiny-sd", tmp_path / "m")

``FAMILIES`` lists one tiny model per family of the latent diffusion paper (and the v-prediction
Stable Diffusion variant), with the sizes the tests build their bundles at. The full-size
architectures (``sd15-architecture``, ``celebahq-ldm-vq4-architecture``) are for benchmarks and
``slow`` tests only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import families, sd


@dataclass(frozen=True)
class ModelSpec:
    make: Callable[..., Path]   # (folder, seed=0) -> folder
    family: str                 # the bundle's "family"
    autoencoder: str            # "kl" | "vq"
    sizes: tuple[tuple[int, int], ...]   # (width, height) the tests build bundles at
    about: str


MODELS: dict[str, ModelSpec] = {
    "tiny-sd": ModelSpec(sd.make_tiny_sd, "text-to-image", "kl", ((32, 32), (64, 48)),
                         "Stable Diffusion 1.x blocks (cross-attention UNet, KL VAE, CLIP), a few hundred KB"),
    "sd-v": ModelSpec(families.make_tiny_sd_v, "text-to-image", "kl", ((32, 32),),
                      "Stable Diffusion 2.x style: v-prediction, OpenCLIP-like (gelu) text encoder"),
    "uncond-vq": ModelSpec(families.make_tiny_ldm_uncond_vq, "unconditional", "vq", ((32, 32),),
                           "LDM-4 CelebA-HQ / LSUN (VQ-f4, UNet2DModel)"),
    "uncond-kl": ModelSpec(families.make_tiny_ldm_uncond_kl, "unconditional", "kl", ((128, 128),),
                           "unconditional LDM on a KL-f8 first stage"),
    "class-unet": ModelSpec(families.make_tiny_class_conditional, "class-conditional", "vq", ((32, 32),),
                            "cin256, diffusers style: class embedding added to the time embedding"),
    "class-context": ModelSpec(families.make_tiny_class_conditional_crossattn, "class-conditional", "vq",
                               ((32, 32),), "cin256 as the original: class embedder -> cross-attention context"),
    "ldmbert": ModelSpec(families.make_tiny_ldm_text2img, "text-to-image", "kl", ((64, 64),),
                         "the paper's text-to-image model: LDMBert + BERT WordPiece tokenizer"),
    "superres": ModelSpec(families.make_tiny_superres, "super-resolution", "vq", ((128, 128),),
                          "LDM 4x super-resolution: the low-resolution image concatenated to the latents"),
    "inpainting": ModelSpec(families.make_tiny_inpainting, "inpainting", "kl", ((32, 32),),
                            "9-channel Stable Diffusion inpainting UNet"),
    "sd15-architecture": ModelSpec(sd.make_sd15_architecture, "text-to-image", "kl", ((512, 512),),
                                   "Stable Diffusion 1.x at full size (benchmarks, slow tests)"),
    "celebahq-ldm-vq4-architecture": ModelSpec(families.make_celebahq_ldm_vq4_architecture, "unconditional", "vq",
                                               ((256, 256),), "LDM-4 CelebA-HQ at full size (slow tests)"),
}

# one tiny model per family (and prediction type) of the paper
FAMILIES = ("uncond-vq", "uncond-kl", "class-unet", "class-context", "ldmbert", "superres", "inpainting", "sd-v")


def make(name: str, folder: Path, seed: int = 0) -> Path:
    """Build model ``name`` of :data:`MODELS` into ``folder``; returns the folder."""
    return MODELS[name].make(Path(folder), seed=seed)
