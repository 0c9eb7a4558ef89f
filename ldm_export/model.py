"""The in-memory description of a loaded model: one frozen record, whatever the family or the source.

Every source (:mod:`ldm_export.sources`) reads everything the exporter needs from its files and
configs once, at load time, and builds a :class:`LoadedModel`; nothing is patched afterwards and
nothing downstream reaches into the modules' configs. What differs between families is data here
(conditioning, guidance rule, concatenated UNet channels, latent scaling) that ends up in the bundle
manifest, so the runtime needs no code per family.

The torch modules themselves (``Modules``) are ordinary mutable ``torch.nn.Module`` objects in eval
mode; the description around them is immutable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

FAMILIES = ("text-to-image", "unconditional", "class-conditional", "super-resolution", "inpainting")


@dataclass(frozen=True)
class Source:
    path: Path
    format: str      # diffusers | compvis | custom
    sha256: str      # of every file the model is made of (see hash_paths)


@dataclass(frozen=True)
class Modules:
    """The torch modules, eval mode, fp32. ``vae`` is a diffusers AutoencoderKL / VQModel; a custom model
    has ``decoder`` (latent → image) and optionally ``encoder`` (image → latent mean) instead."""

    unet: torch.nn.Module
    vae: torch.nn.Module | None = None
    decoder: torch.nn.Module | None = None
    encoder: torch.nn.Module | None = None
    text_encoder: torch.nn.Module | None = None
    class_embedder: torch.nn.Module | None = None


@dataclass(frozen=True)
class Latent:
    channels: int
    downsample_factor: int          # the autoencoder's
    scaling_factor: float
    shift_factor: float = 0.0
    decode_scale: str = "divide"    # divide | multiply_reciprocal | none: how the reference scales latents

    def to_manifest(self) -> dict:
        return {"channels": self.channels, "downsample_factor": self.downsample_factor,
                "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
                "decode_scale": self.decode_scale}


@dataclass(frozen=True)
class Text:
    """A text encoder's facts: its tokenizer folder, sequence length, width and vocabulary."""

    encoder: str                    # clip | ldmbert
    tokenizer_dir: Path
    max_length: int                 # the encoder's (and the UNet's context's) sequence length
    hidden_size: int
    vocab_size: int
    tokenizer_max_length: int | None = None   # forced padding length (LDMTextToImagePipeline pads to 77)

    @property
    def tokenizer_kind(self) -> str:
        return "bert" if self.encoder == "ldmbert" else "clip"


@dataclass(frozen=True)
class Classes:
    num_classes: int                # embedding rows, the null class included
    null_class: int | None          # the unconditional class (None: no guidance possible)
    via: str                        # unet: added to the time embedding | context: embedder → cross-attention
    embed_dim: int | None = None    # the embedder's width (via == "context")


@dataclass(frozen=True)
class Conditioning:
    kind: str                       # text | class | none
    text: Text | None = None
    classes: Classes | None = None

    def to_manifest(self) -> dict:
        if self.text is not None:
            return {"kind": "text", "encoder": self.text.encoder, "max_length": self.text.max_length,
                    "hidden_size": self.text.hidden_size}
        if self.classes is not None:
            return {"kind": "class", "via": self.classes.via, "num_classes": self.classes.num_classes,
                    "null_class": self.classes.null_class}
        return {"kind": "none"}


@dataclass(frozen=True)
class Guidance:
    rule: str = "greater_than_one"  # greater_than_one | not_one | never (ldm_runtime.pipeline.GUIDANCE_RULES)
    negative_prompt: bool = True

    def to_manifest(self) -> dict:
        return {"rule": self.rule, "negative_prompt": self.negative_prompt}


@dataclass(frozen=True)
class Attention:
    """An attention layer, for memory estimates: its component, its resolution as a downsampling of the image
    and its heads. The exported graphs compute attention as MatMul + Softmax, so each holds a
    (tokens × tokens) score matrix per head."""

    component: str
    downsample: int
    heads: int


@dataclass(frozen=True)
class FeatureMaps:
    """A level of a component, for memory estimates: its resolution as a downsampling of the image, and the
    channels of its feature maps there."""

    component: str
    downsample: int
    channels: int


@dataclass(frozen=True)
class LoadedModel:
    """Everything the exporter, the reference and calibration need, independent of where the model came from."""

    family: str
    source: Source
    modules: Modules
    scheduler_config: Mapping[str, Any]   # diffusers scheduler_config.json keys (read-only)
    autoencoder_kind: str                 # kl | vq
    latent: Latent
    conditioning: Conditioning
    guidance: Guidance
    unet_in_channels: int                 # latent channels + concatenated channels
    unet_downsampling: int                # the UNet's total downsampling
    sample_size: tuple[int, int]          # (height, width) of the latents the UNet was trained at
    unet_concat: tuple[str, ...] = ()     # low_res_image | mask, masked_image_latents
    scheduler_class: str = "DDIMScheduler"  # the model's own scheduler (the runtime's default sampler)
    reference_pipeline: Any = None        # the family's diffusers pipeline, when it has one
    attention: tuple[Attention, ...] = ()     # where the components attend (memory estimates; () if unknown)
    feature_maps: tuple[FeatureMaps, ...] = ()  # their levels (memory estimates; () if unknown)

    def __post_init__(self) -> None:
        if not isinstance(self.scheduler_config, MappingProxyType):
            object.__setattr__(self, "scheduler_config", MappingProxyType(dict(self.scheduler_config)))

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this: the autoencoder factor × the UNet's total downsampling."""
        return self.latent.downsample_factor * self.unet_downsampling

    @property
    def default_resolution(self) -> tuple[int, int]:
        """(width, height) of the images the model was trained at."""
        h, w = self.sample_size
        f = self.latent.downsample_factor
        return w * f, h * f

    @property
    def text(self) -> Text | None:
        return self.conditioning.text

    @property
    def classes(self) -> Classes | None:
        return self.conditioning.classes


def sample_size(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """A diffusers ``sample_size`` (an int, or [height, width]) as (height, width)."""
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def hash_paths(paths: list[Path]) -> str:
    """sha256 over the relative paths and contents of every file under ``paths``, in sorted order."""
    h = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(q for q in root.rglob("*") if q.is_file())
        for p in files:
            h.update(str(p.relative_to(root.parent if root.is_file() else root)).encode())
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
    return h.hexdigest()
