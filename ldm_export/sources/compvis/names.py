"""The original checkpoint layout: class paths, key prefixes, and one key table per module.

Every diffusers tensor name maps to exactly one original tensor name (or a third of one, for
OpenCLIP's fused q/k/v projection), built per model from its diffusers config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

LATENT_DIFFUSION = "ldm.models.diffusion.ddpm.LatentDiffusion"
UNET_MODEL = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
AUTOENCODER_KL = "ldm.models.autoencoder.AutoencoderKL"
FROZEN_CLIP = "ldm.modules.encoders.modules.FrozenCLIPEmbedder"
FROZEN_OPENCLIP = "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"

SUPPORTED_TARGETS: dict[str, tuple[str, ...]] = {
    "model": (LATENT_DIFFUSION,),
    "unet_config": (UNET_MODEL,),
    "first_stage_config": (AUTOENCODER_KL,),
    "cond_stage_config": (FROZEN_CLIP, FROZEN_OPENCLIP),
}

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPENCLIP_PREFIX = "cond_stage_model.model."

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"

# Buffers of LatentDiffusion that are derived from the YAML (or training-only) and carry no weights.
_SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)
IGNORED_KEYS = frozenset(_SCHEDULE_BUFFERS + (
    "logvar", "lvlb_weights", "scale_factor",
    CLIP_PREFIX + "embeddings.position_ids",
    OPENCLIP_PREFIX + "text_projection", OPENCLIP_PREFIX + "logit_scale", OPENCLIP_PREFIX + "attn_mask",
))
IGNORED_PREFIXES = ("model_ema.", "first_stage_model.loss.")

PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
# the original "linear" schedule is linear in sqrt(beta): diffusers' "scaled_linear"
BETA_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear"}


# --------------------------------------------------------------------------- key tables


@dataclass(frozen=True)
class Entry:
    """diffusers tensor ``diff`` <-> original tensor ``orig`` (or part ``chunk=(i, n)`` of it along dim 0)."""

    diff: str
    orig: str
    conv1x1: bool = False             # original is a 1x1 Conv2d weight, diffusers a Linear weight
    chunk: tuple[int, int] | None = None


_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_SIMPLE = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
                "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _rename_first(rest: str, table: dict[str, str]) -> str:
    for d, o in table.items():
        if rest.startswith(d + "."):
            return o + rest[len(d):]
    raise KeyError(rest)


def _unet_entry(k: str, nrb: int, cross_levels: frozenset[int], levels: int) -> Entry:
    """Original UNetModel name of diffusers UNet2DConditionModel tensor ``k``.

    Input blocks: 0 is conv_in, then per level ``nrb`` (resnet [+ transformer]) blocks and, except on the
    last level, one downsample block. Output blocks: per level (deepest first) ``nrb + 1`` blocks, the
    last of each level but the top one ending with an upsample. Transformer internals share diffusers' names.
    """
    for d, o in _UNET_SIMPLE.items():
        if k.startswith(d + "."):
            return Entry(k, UNET_PREFIX + o + k[len(d):])
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", k):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            o = f"input_blocks.{1 + i * (nrb + 1) + nrb}.0.op.{rest.removeprefix('conv.')}"
        elif kind == "resnets":
            o = f"input_blocks.{1 + i * (nrb + 1) + j}.0.{_rename_first(rest, _UNET_RESNET)}"
        else:
            o = f"input_blocks.{1 + i * (nrb + 1) + j}.1.{rest}"
        return Entry(k, UNET_PREFIX + o)
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", k):
        kind, j, rest = m[1], int(m[2]), m[3]
        o = (f"middle_block.{2 * j}.{_rename_first(rest, _UNET_RESNET)}" if kind == "resnets"
             else f"middle_block.1.{rest}")
        return Entry(k, UNET_PREFIX + o)
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", k):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        level = levels - 1 - i
        if kind == "upsamplers":
            slot = 2 if level in cross_levels else 1
            o = f"output_blocks.{i * (nrb + 1) + nrb}.{slot}.conv.{rest.removeprefix('conv.')}"
        elif kind == "resnets":
            o = f"output_blocks.{i * (nrb + 1) + j}.0.{_rename_first(rest, _UNET_RESNET)}"
        else:
            o = f"output_blocks.{i * (nrb + 1) + j}.1.{rest}"
        return Entry(k, UNET_PREFIX + o)
    raise KeyError(f"no original name for UNet tensor {k}")


_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_entry(k: str, levels: int) -> Entry:
    """Original (taming-style Encoder/Decoder) name of diffusers AutoencoderKL tensor ``k``.

    The decoder's ``up`` list is indexed by resolution level (``up.0`` is the full-resolution one), while
    diffusers' ``up_blocks`` run deepest first. Mid-block attention is 1x1 convs in the original.
    """
    if k.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return Entry(k, VAE_PREFIX + k)
    part, rest = k.split(".", 1)
    if part not in ("encoder", "decoder"):
        raise KeyError(f"no original name for VAE tensor {k}")
    conv1x1 = False
    if rest.startswith(("conv_in.", "conv_out.")):
        o = rest
    elif rest.startswith("conv_norm_out."):
        o = "norm_out." + rest[len("conv_norm_out."):]
    elif m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest):
        o = f"mid.block_{int(m[1]) + 1}.{_rename_first(m[2], _VAE_RESNET)}"
    elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        o = f"mid.attn_1.{_rename_first(m[1], _VAE_ATTN)}"
        conv1x1 = not m[1].startswith("group_norm.") and m[1].endswith(".weight")
    elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        o = f"down.{m[1]}.block.{m[2]}.{_rename_first(m[3], _VAE_RESNET)}"
    elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest):
        o = f"down.{m[1]}.downsample.conv.{m[2]}"
    elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        o = f"up.{levels - 1 - int(m[1])}.block.{m[2]}.{_rename_first(m[3], _VAE_RESNET)}"
    elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest):
        o = f"up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    else:
        raise KeyError(f"no original name for VAE tensor {k}")
    return Entry(k, f"{VAE_PREFIX}{part}.{o}", conv1x1=conv1x1)


def _clip_entry(k: str) -> Entry:
    """FrozenCLIPEmbedder wraps a transformers CLIPTextModel: the names are the same under the prefix."""
    return Entry(k, CLIP_PREFIX + k.removeprefix("text_model."))


_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}


def _openclip_entry(k: str) -> Entry:
    """OpenCLIP text tower names (``FrozenOpenCLIPEmbedder``); q/k/v are thirds of ``in_proj_*``."""
    k0 = k.removeprefix("text_model.")
    if k0 == "embeddings.token_embedding.weight":
        return Entry(k, OPENCLIP_PREFIX + "token_embedding.weight")
    if k0 == "embeddings.position_embedding.weight":
        return Entry(k, OPENCLIP_PREFIX + "positional_embedding")
    if k0.startswith("final_layer_norm."):
        return Entry(k, OPENCLIP_PREFIX + "ln_final." + k0.split(".", 1)[1])
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", k0):
        return Entry(k, f"{OPENCLIP_PREFIX}transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}",
                      chunk=("qkv".index(m[2]), 3))
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", k0):
        return Entry(k, f"{OPENCLIP_PREFIX}transformer.resblocks.{m[1]}.{_rename_first(m[2], _OPENCLIP_LAYER)}")
    raise KeyError(f"no original name for text encoder tensor {k}")


def _entries(module: Any, fn: Callable[[str], Entry]) -> list[Entry]:
    # position_ids: a CLIP buffer (persistent in some transformers versions), not a weight
    entries = [fn(k) for k in module.state_dict() if not k.endswith("position_ids")]
    seen = {(e.orig, e.chunk) for e in entries}
    if len(seen) != len(entries):  # a bug in the table, never the user's fault
        raise RuntimeError("the original-layout key table is not one-to-one")
    return entries


def unet_entries(unet: Any) -> list[Entry]:
    c = unet.config
    cross = frozenset(i for i, t in enumerate(c.down_block_types) if t == "CrossAttnDownBlock2D")
    return _entries(unet, lambda k: _unet_entry(k, int(c.layers_per_block), cross, len(c.block_out_channels)))


def vae_entries(vae: Any) -> list[Entry]:
    return _entries(vae, lambda k: _vae_entry(k, len(vae.config.block_out_channels)))


def text_entries(text_encoder: Any, kind: str) -> list[Entry]:
    return _entries(text_encoder, _clip_entry if kind == "clip" else _openclip_entry)


def original_shape(e: Entry, diff_shape: tuple[int, ...]) -> tuple[int, ...]:
    if e.conv1x1:
        return (*diff_shape, 1, 1)
    if e.chunk:
        return (diff_shape[0] * e.chunk[1], *diff_shape[1:])
    return tuple(diff_shape)
