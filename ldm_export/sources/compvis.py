"""Original CompVis / Stability single-file checkpoints <-> diffusers modules.

A checkpoint in the original layout is one ``.ckpt`` (a torch pickle) or
``.safetensors`` file holding the whole ``LatentDiffusion`` state dict, plus the
YAML config it was trained with (``configs/stable-diffusion/v1-inference.yaml``
and friends). :func:`convert_checkpoint` turns the pair into diffusers modules
(``UNet2DConditionModel``, ``AutoencoderKL``, transformers' ``CLIPTextModel``)
and a DDIM scheduler config; :func:`save_original_checkpoint` is the inverse.

Both directions use ONE key table, built per model from its diffusers config:
every diffusers tensor name maps to exactly one original tensor name (or a
third of one, for OpenCLIP's fused q/k/v projection), so conversion and saving
cannot drift apart.

Safety: ``.ckpt`` files are read only with ``torch.load(..., weights_only=True)``.
A file that needs arbitrary pickled objects is refused, never executed.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ldm_runtime.errors import UserError

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
_IGNORED_KEYS = frozenset(_SCHEDULE_BUFFERS + (
    "logvar", "lvlb_weights", "scale_factor",
    CLIP_PREFIX + "embeddings.position_ids",
    OPENCLIP_PREFIX + "text_projection", OPENCLIP_PREFIX + "logit_scale", OPENCLIP_PREFIX + "attn_mask",
))
_IGNORED_PREFIXES = ("model_ema.", "first_stage_model.loss.")

_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
# the original "linear" schedule is linear in sqrt(beta): diffusers' "scaled_linear"
_BETA_SCHEDULE = {"linear": "scaled_linear", "sqrt_linear": "linear"}


# --------------------------------------------------------------------------- key tables


@dataclass(frozen=True)
class _Entry:
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


def _unet_entry(k: str, nrb: int, cross_levels: frozenset[int], levels: int) -> _Entry:
    """Original UNetModel name of diffusers UNet2DConditionModel tensor ``k``.

    Input blocks: 0 is conv_in, then per level ``nrb`` (resnet [+ transformer]) blocks and, except on the
    last level, one downsample block. Output blocks: per level (deepest first) ``nrb + 1`` blocks, the
    last of each level but the top one ending with an upsample. Transformer internals share diffusers' names.
    """
    for d, o in _UNET_SIMPLE.items():
        if k.startswith(d + "."):
            return _Entry(k, UNET_PREFIX + o + k[len(d):])
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", k):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            o = f"input_blocks.{1 + i * (nrb + 1) + nrb}.0.op.{rest.removeprefix('conv.')}"
        elif kind == "resnets":
            o = f"input_blocks.{1 + i * (nrb + 1) + j}.0.{_rename_first(rest, _UNET_RESNET)}"
        else:
            o = f"input_blocks.{1 + i * (nrb + 1) + j}.1.{rest}"
        return _Entry(k, UNET_PREFIX + o)
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", k):
        kind, j, rest = m[1], int(m[2]), m[3]
        o = (f"middle_block.{2 * j}.{_rename_first(rest, _UNET_RESNET)}" if kind == "resnets"
             else f"middle_block.1.{rest}")
        return _Entry(k, UNET_PREFIX + o)
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
        return _Entry(k, UNET_PREFIX + o)
    raise KeyError(f"no original name for UNet tensor {k}")


_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_entry(k: str, levels: int) -> _Entry:
    """Original (taming-style Encoder/Decoder) name of diffusers AutoencoderKL tensor ``k``.

    The decoder's ``up`` list is indexed by resolution level (``up.0`` is the full-resolution one), while
    diffusers' ``up_blocks`` run deepest first. Mid-block attention is 1x1 convs in the original.
    """
    if k.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return _Entry(k, VAE_PREFIX + k)
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
    return _Entry(k, f"{VAE_PREFIX}{part}.{o}", conv1x1=conv1x1)


def _clip_entry(k: str) -> _Entry:
    """FrozenCLIPEmbedder wraps a transformers CLIPTextModel: the names are the same under the prefix."""
    return _Entry(k, CLIP_PREFIX + k.removeprefix("text_model."))


_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}


def _openclip_entry(k: str) -> _Entry:
    """OpenCLIP text tower names (``FrozenOpenCLIPEmbedder``); q/k/v are thirds of ``in_proj_*``."""
    k0 = k.removeprefix("text_model.")
    if k0 == "embeddings.token_embedding.weight":
        return _Entry(k, OPENCLIP_PREFIX + "token_embedding.weight")
    if k0 == "embeddings.position_embedding.weight":
        return _Entry(k, OPENCLIP_PREFIX + "positional_embedding")
    if k0.startswith("final_layer_norm."):
        return _Entry(k, OPENCLIP_PREFIX + "ln_final." + k0.split(".", 1)[1])
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", k0):
        return _Entry(k, f"{OPENCLIP_PREFIX}transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}",
                      chunk=("qkv".index(m[2]), 3))
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", k0):
        return _Entry(k, f"{OPENCLIP_PREFIX}transformer.resblocks.{m[1]}.{_rename_first(m[2], _OPENCLIP_LAYER)}")
    raise KeyError(f"no original name for text encoder tensor {k}")


def _entries(module: Any, fn: Callable[[str], _Entry]) -> list[_Entry]:
    # position_ids: a CLIP buffer (persistent in some transformers versions), not a weight
    entries = [fn(k) for k in module.state_dict() if not k.endswith("position_ids")]
    seen = {(e.orig, e.chunk) for e in entries}
    if len(seen) != len(entries):  # a bug in the table, never the user's fault
        raise RuntimeError("the original-layout key table is not one-to-one")
    return entries


def _unet_entries(unet: Any) -> list[_Entry]:
    c = unet.config
    cross = frozenset(i for i, t in enumerate(c.down_block_types) if t == "CrossAttnDownBlock2D")
    return _entries(unet, lambda k: _unet_entry(k, int(c.layers_per_block), cross, len(c.block_out_channels)))


def _vae_entries(vae: Any) -> list[_Entry]:
    return _entries(vae, lambda k: _vae_entry(k, len(vae.config.block_out_channels)))


def _text_entries(text_encoder: Any, kind: str) -> list[_Entry]:
    return _entries(text_encoder, _clip_entry if kind == "clip" else _openclip_entry)


def _original_shape(e: _Entry, diff_shape: tuple[int, ...]) -> tuple[int, ...]:
    if e.conv1x1:
        return (*diff_shape, 1, 1)
    if e.chunk:
        return (diff_shape[0] * e.chunk[1], *diff_shape[1:])
    return tuple(diff_shape)


# --------------------------------------------------------------------------- the YAML config


@dataclass
class _Spec:
    unet: dict[str, Any]          # UNet2DConditionModel(**unet)
    vae: dict[str, Any]           # AutoencoderKL(**vae)
    text_kind: str                # "clip" (FrozenCLIPEmbedder) or "openclip" (FrozenOpenCLIPEmbedder)
    text_layer: str               # "last" or "penultimate"
    text_heads: int | None        # from the optional top-level ``ldm_export: {text_encoder: …}`` section
    scheduler_config: dict[str, Any]
    scale_by_std: bool


class _Config:
    """Typed access to the YAML with one-line errors that name the offending entry."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, msg: str) -> UserError:
        return UserError(f"config {self.path}: {msg}")

    def section(self, parent: dict, key: str, where: str) -> dict:
        v = parent.get(key)
        if v is None:
            v = {}
        if not isinstance(v, dict):
            raise self.fail(f"{where}.{key} must be a mapping, found {type(v).__name__}")
        return v

    def target(self, parent: dict, key: str, where: str) -> tuple[str, dict]:
        sub = parent.get(key)
        if not isinstance(sub, dict) or not isinstance(sub.get("target"), str):
            raise self.fail(f"{where}.{key} lacks a 'target:'; expected one of: {', '.join(SUPPORTED_TARGETS[key])}")
        t = sub["target"]
        if t not in SUPPORTED_TARGETS[key]:
            raise self.fail(f"unsupported {key} target {t}; supported: {', '.join(SUPPORTED_TARGETS[key])}")
        return t, self.section(sub, "params", f"{where}.{key}")

    def num(self, d: dict, key: str, where: str, kind: type = int, default: Any = ...) -> Any:
        if key not in d or d[key] is None:
            if default is ...:
                raise self.fail(f"{where} lacks '{key}'")
            return default
        v = d[key]
        try:
            if kind is int:
                if isinstance(v, bool) or float(v) != int(float(v)):
                    raise ValueError
                return int(float(v))
            return float(v)
        except (TypeError, ValueError):
            raise self.fail(f"{where}.{key} must be {'an integer' if kind is int else 'a number'}, found {v!r}") from None

    def ints(self, d: dict, key: str, where: str, default: Any = ...) -> list[int]:
        v = d.get(key, default)
        if v is ...:
            raise self.fail(f"{where} lacks '{key}'")
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, (list, tuple)):
            raise self.fail(f"{where}.{key} must be a list of integers, found {v!r}")
        return [self.num({key: x}, key, where) for x in v]

    def one_int(self, d: dict, key: str, where: str, default: Any = ...) -> int:
        """An int, or a per-level list whose entries are all equal (diffusers needs one value)."""
        vals = self.ints(d, key, where, default)
        if not vals or len(set(vals)) != 1:
            raise self.fail(f"{where}.{key}={vals}: only one value for all levels is supported")
        return vals[0]

    def require(self, d: dict, key: str, where: str, ok: Callable[[Any], bool], default: Any, why: str) -> Any:
        v = d.get(key, default)
        if not ok(v):
            raise self.fail(f"{where}.{key}={v!r} is not supported ({why})")
        return v


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"config {path} is not a LatentDiffusion config: it is not valid YAML ({first})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or "target" not in data["model"]:
        found = (f"top-level keys: {', '.join(map(str, list(data)[:6])) or 'none'}" if isinstance(data, dict)
                 else f"a {type(data).__name__}")
        raise UserError(f"config {path} is not a LatentDiffusion config: expected a top-level 'model:' with "
                        f"'target: {LATENT_DIFFUSION}' (found {found})")
    return data


def _parse_config(path: Path) -> _Spec:
    data = _read_yaml(path)
    cfg = _Config(path)
    model = data["model"]
    if model["target"] != LATENT_DIFFUSION:
        raise cfg.fail(f"unsupported model target {model['target']}; supported: {LATENT_DIFFUSION} "
                       "(text-to-image latent diffusion)")
    p = cfg.section(model, "params", "model")
    W = "model.params"

    cond = p.get("cond_stage_config")
    if isinstance(cond, str):  # "__is_unconditional__" / "__is_first_stage__"
        raise cfg.fail(f"cond_stage_config is {cond!r}: only text-conditioned models are supported")
    ck = p.get("conditioning_key")
    if ck is None:  # LatentDiffusion's own default
        ck = "concat" if p.get("concat_mode", True) else "crossattn"
    if ck != "crossattn":
        raise cfg.fail(f"{W}.conditioning_key is {ck!r}: only 'crossattn' (text-to-image) is supported")

    # --- scheduler
    param = p.get("parameterization", "eps")
    if param not in _PREDICTION:
        raise cfg.fail(f"{W}.parameterization={param!r} is not supported (supported: {', '.join(_PREDICTION)})")
    bs = p.get("beta_schedule", "linear")
    if bs not in _BETA_SCHEDULE:
        raise cfg.fail(f"{W}.beta_schedule={bs!r} is not supported (supported: {', '.join(_BETA_SCHEDULE)})")
    scheduler = {
        "beta_start": cfg.num(p, "linear_start", W, float, 1e-4),
        "beta_end": cfg.num(p, "linear_end", W, float, 2e-2),
        "beta_schedule": _BETA_SCHEDULE[bs],
        "num_train_timesteps": cfg.num(p, "timesteps", W, int, 1000),
        "prediction_type": _PREDICTION[param],
        "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False, "timestep_spacing": "leading",
    }

    # --- UNet
    _, u = cfg.target(p, "unet_config", W)
    U = f"{W}.unet_config.params"
    for key, default, want, why in (  # UNetModel's default, the only value mapped, why
        ("use_spatial_transformer", False, True, "text cross-attention needs spatial transformers"),
        ("use_scale_shift_norm", False, False, "FiLM-style resblocks are not mapped"),
        ("resblock_updown", False, False, "resblock up/downsampling is not mapped"),
        ("conv_resample", True, True, "non-learned resampling is not mapped"),
        ("dims", 2, 2, "only 2-D UNets"),
        ("num_classes", None, None, "class-conditional UNets are not text-to-image"),
        ("adm_in_channels", None, None, "ADM / SDXL-style conditioning is not mapped"),
        ("n_embed", None, None, "codebook prediction is not mapped"),
        ("disable_self_attentions", None, None, "disabled self-attention is not mapped"),
        ("num_attention_blocks", None, None, "partial attention blocks are not mapped"),
        ("disable_middle_self_attn", False, False, "disabled self-attention is not mapped"),
    ):
        cfg.require(u, key, U, lambda v, want=want: v == want, default, why)
    mc = cfg.num(u, "model_channels", U)
    mult = cfg.ints(u, "channel_mult", U, [1, 2, 4, 8])
    if not mult or mult[0] != 1:
        raise cfg.fail(f"{U}.channel_mult={mult}: the first multiplier must be 1")
    chans = [mc * m for m in mult]
    if any(c % 32 for c in chans):
        raise cfg.fail(f"{U}: every level's channels {chans} must be a multiple of 32 (GroupNorm32)")
    nrb = cfg.one_int(u, "num_res_blocks", U)
    attn_res = set(cfg.ints(u, "attention_resolutions", U))
    cross = [2 ** i in attn_res for i in range(len(mult))]
    context = cfg.one_int(u, "context_dim", U)
    depth = cfg.one_int(u, "transformer_depth", U, 1)
    nh = cfg.num(u, "num_heads", U, int, -1)
    nhc = cfg.num(u, "num_head_channels", U, int, -1)
    if nhc == -1 and nh == -1:
        raise cfg.fail(f"{U} sets neither num_heads nor num_head_channels")
    heads = [c // nhc if nhc != -1 else nh for c in chans]
    for i, (c, h) in enumerate(zip(chans, heads)):  # the middle block (deepest level) always has attention
        if (cross[i] or i == len(chans) - 1) and (h <= 0 or c % h):
            raise cfg.fail(f"{U}: {c} channels do not split into {h} attention heads")
    in_ch, out_ch = cfg.num(u, "in_channels", U), cfg.num(u, "out_channels", U)
    unet = dict(
        sample_size=cfg.num(p, "image_size", W, int, 256),
        in_channels=in_ch, out_channels=out_ch,
        down_block_types=tuple("CrossAttnDownBlock2D" if x else "DownBlock2D" for x in cross),
        up_block_types=tuple("CrossAttnUpBlock2D" if x else "UpBlock2D" for x in reversed(cross)),
        block_out_channels=tuple(chans), layers_per_block=nrb,
        cross_attention_dim=context, transformer_layers_per_block=depth,
        attention_head_dim=heads[0] if nhc == -1 else tuple(heads),
        use_linear_projection=bool(u.get("use_linear_in_transformer", False)),
        norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
        mid_block_type="UNetMidBlock2DCrossAttn", act_fn="silu",
    )

    # --- VAE
    _, f = cfg.target(p, "first_stage_config", W)
    F = f"{W}.first_stage_config.params"
    dd = cfg.section(f, "ddconfig", F)
    D = f"{F}.ddconfig"
    embed = cfg.num(f, "embed_dim", F)
    z = cfg.num(dd, "z_channels", D)
    if z != embed:
        raise cfg.fail(f"{D}.z_channels={z} differs from {F}.embed_dim={embed}: not supported")
    cfg.require(dd, "double_z", D, lambda v: v is True, True, "a KL autoencoder needs double_z")
    cfg.require(dd, "resamp_with_conv", D, lambda v: v is True, True, "non-learned resampling is not mapped")
    cfg.require(dd, "attn_type", D, lambda v: v in ("vanilla", "vanilla-xformers"), "vanilla",
                "only vanilla attention")
    cfg.require(dd, "use_linear_attn", D, lambda v: not v, False, "only vanilla attention")
    cfg.require(dd, "give_pre_end", D, lambda v: not v, False, "not an autoencoder output")
    cfg.require(dd, "tanh_out", D, lambda v: not v, False, "tanh outputs are not mapped")
    if cfg.ints(dd, "attn_resolutions", D, []):
        raise cfg.fail(f"{D}.attn_resolutions must be [] (attention only in the middle block, as in SD)")
    ch = cfg.num(dd, "ch", D)
    vmult = cfg.ints(dd, "ch_mult", D, [1, 2, 4, 8])
    if not vmult or vmult[0] != 1:
        raise cfg.fail(f"{D}.ch_mult={vmult}: the first multiplier must be 1")
    if any(ch * m % 32 for m in vmult):
        raise cfg.fail(f"{D}: every level's channels must be a multiple of 32 (GroupNorm32)")
    channels = cfg.num(p, "channels", W, int, embed)
    if not (channels == embed == in_ch == out_ch):
        raise cfg.fail(f"latent channels disagree: {W}.channels={channels}, embed_dim={embed}, "
                       f"UNet in/out_channels={in_ch}/{out_ch}")
    vae = dict(
        in_channels=cfg.num(dd, "in_channels", D), out_channels=cfg.num(dd, "out_ch", D),
        down_block_types=("DownEncoderBlock2D",) * len(vmult), up_block_types=("UpDecoderBlock2D",) * len(vmult),
        block_out_channels=tuple(ch * m for m in vmult), layers_per_block=cfg.num(dd, "num_res_blocks", D),
        act_fn="silu", latent_channels=z, norm_num_groups=32, sample_size=cfg.num(dd, "resolution", D),
        scaling_factor=cfg.num(p, "scale_factor", W, float, 1.0),
    )

    # --- text encoder
    t, c = cfg.target(p, "cond_stage_config", W)
    C = f"{W}.cond_stage_config.params"
    if t == FROZEN_CLIP:
        kind = "clip"
        layer = cfg.require(c, "layer", C, lambda v: v == "last", "last",
                            "only the last hidden state (with the final layer norm) is mapped")
    else:
        kind = "openclip"
        layer = cfg.require(c, "layer", C, lambda v: v in ("last", "penultimate"), "last",
                            "supported: last, penultimate")
    hints = data.get("ldm_export") if isinstance(data.get("ldm_export"), dict) else {}
    th = hints.get("text_encoder") if isinstance(hints.get("text_encoder"), dict) else {}
    heads_hint = cfg.num(th, "num_attention_heads", "ldm_export.text_encoder", int, None)
    return _Spec(unet=unet, vae=vae, text_kind=kind, text_layer=layer, text_heads=heads_hint,
                 scheduler_config=scheduler, scale_by_std=bool(p.get("scale_by_std", False)))


# --------------------------------------------------------------------------- reading checkpoints


def _pickle_refusal(path: Path, err: BaseException) -> UserError:
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f" ({m[1]})" if m else ""
    return UserError(
        f"cannot convert {path}: it contains pickled code{what} that ldm-export will not execute; "
        f"convert it to .safetensors in an environment you trust (torch.load with weights_only=False, "
        f"then safetensors.torch.save_file of its state_dict) and pass that file instead")


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"cannot convert {path}: not a readable .safetensors file ({str(e).splitlines()[0]})") from None
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            # the weights-only unpickler met something other than tensors and plain containers: code
            if "Weights only load failed" in msg and not re.search(r"Unsupported operand|invalid load key", msg):
                raise _pickle_refusal(path, e) from None
            raise UserError(f"cannot convert {path}: not a readable PyTorch checkpoint "
                            f"({str(e).strip().splitlines()[0][:200]})") from None
        except Exception as e:  # torch.load fails on garbage in many ways (KeyError, IndexError, RuntimeError, …)
            raise UserError(f"cannot convert {path}: not a readable PyTorch checkpoint "
                            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
    else:
        raise UserError(f"cannot convert {path}: unsupported checkpoint extension {path.suffix or '(none)'}; "
                        f"supported: {SAFETENSORS_SUFFIX}, {', '.join(TORCH_SUFFIXES)}")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"cannot convert {path}: it holds no state dict of tensors")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    # very old transformers versions had no "text_model." level inside CLIPTextModel
    old = "cond_stage_model.transformer."
    if not any(k.startswith(CLIP_PREFIX) for k in sd) and any(k.startswith(old) for k in sd):
        sd = {(CLIP_PREFIX + k[len(old):] if k.startswith(old) else k): v for k, v in sd.items()}
    return sd


def _mismatch(checkpoint: Path, config: Path, missing: list[str], unexpected: list[str]) -> UserError:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", …" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' * (len(missing) != 1)} ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) != 1)} ({few(unexpected)})")
    return UserError(f"cannot convert {checkpoint}: its weights do not match config {config.name}: "
                     f"{', '.join(parts)}; is this the config that belongs to this checkpoint?")


class _MissingKey(Exception):
    pass


def _text_config(sd: dict[str, Any], spec: _Spec, tokenizer_dir: Path | None) -> dict[str, Any]:
    """CLIPTextConfig kwargs read off the weights (the YAML names a pretrained encoder, not its shape)."""

    def get(k: str) -> Any:
        if k not in sd:
            raise _MissingKey(k)
        return sd[k]

    if spec.text_kind == "clip":
        tok = get(CLIP_PREFIX + "embeddings.token_embedding.weight")
        pos = get(CLIP_PREFIX + "embeddings.position_embedding.weight")
        layer_re, fc1 = re.compile(re.escape(CLIP_PREFIX) + r"encoder\.layers\.(\d+)\."), "mlp.fc1.weight"
        act = "quick_gelu"
        prefix = CLIP_PREFIX + "encoder.layers.0."
    else:
        tok = get(OPENCLIP_PREFIX + "token_embedding.weight")
        pos = get(OPENCLIP_PREFIX + "positional_embedding")
        layer_re, fc1 = re.compile(re.escape(OPENCLIP_PREFIX) + r"transformer\.resblocks\.(\d+)\."), "mlp.c_fc.weight"
        act = "gelu"
        prefix = OPENCLIP_PREFIX + "transformer.resblocks.0."
    n_layers = 1 + max((int(m[1]) for k in sd if (m := layer_re.match(k))), default=-1)
    inter = get(prefix + fc1).shape[0]
    if spec.text_layer == "penultimate":
        n_layers -= 1
    if n_layers < 1:
        raise _MissingKey(prefix + fc1)
    vocab, hidden = tok.shape
    heads = spec.text_heads or (hidden // 64 if hidden % 64 == 0 else None)
    if not heads or hidden % heads:
        raise UserError(f"cannot tell the text encoder's number of attention heads (hidden size {hidden}); "
                        "add 'ldm_export: {text_encoder: {num_attention_heads: N}}' at the top of the YAML")
    bos, eos = vocab - 2, vocab - 1  # CLIP's convention: the two special tokens come last
    if tokenizer_dir is not None:
        bos, eos = _tokenizer_ids(tokenizer_dir, vocab, bos, eos)
    return dict(vocab_size=int(vocab), hidden_size=int(hidden), intermediate_size=int(inter),
                num_hidden_layers=n_layers, num_attention_heads=int(heads),
                max_position_embeddings=int(pos.shape[0]), hidden_act=act, layer_norm_eps=1e-5,
                bos_token_id=bos, eos_token_id=eos, pad_token_id=1)


def _tokenizer_ids(tokenizer_dir: Path, vocab: int, bos: int, eos: int) -> tuple[int, int]:
    import json

    vf = tokenizer_dir / "vocab.json"
    if not vf.is_file():
        return bos, eos
    try:
        tokens = json.loads(vf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"tokenizer {vf} is not valid JSON ({e})") from None
    if len(tokens) > vocab:
        raise UserError(f"tokenizer {tokenizer_dir} has {len(tokens)} tokens but the checkpoint's text encoder "
                        f"has only {vocab} embeddings: they do not belong together")
    return int(tokens.get("<|startoftext|>", bos)), int(tokens.get("<|endoftext|>", eos))


def convert_checkpoint(checkpoint: Path, config: Path, tokenizer_dir: Path | None = None) -> dict:
    """Convert an original single-file checkpoint + its YAML into diffusers modules (eval mode, fp32).

    Returns ``{"unet", "vae", "text_encoder" (None when the file holds no text-encoder weights),
    "scheduler_config", "family": "text-to-image"}``. Raises a one-line :class:`UserError` on bad input.
    """
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    checkpoint, config = Path(checkpoint), Path(config)
    for what, p in (("checkpoint", checkpoint), ("config", config)):
        if not p.exists():
            raise UserError(f"cannot convert: {what} {p} does not exist")
        if not p.is_file():
            raise UserError(f"cannot convert: {what} {p} is not a file")
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tokenizer_dir is not None and not tokenizer_dir.is_dir():
        raise UserError(f"cannot convert: tokenizer folder {tokenizer_dir} does not exist")
    spec = _parse_config(config)  # config errors first: reading the weights is the slow part
    sd = _read_state_dict(checkpoint)

    with init_empty_weights():  # parameters on the meta device: the checkpoint supplies every one
        unet = UNet2DConditionModel(**spec.unet)
        vae = AutoencoderKL(**spec.vae)
    parts: list[tuple[str, Any, list[_Entry]]] = [("unet", unet, _unet_entries(unet)), ("vae", vae, _vae_entries(vae))]
    missing: list[str] = []
    if any(k.startswith("cond_stage_model.") for k in sd):
        try:
            tcfg = _text_config(sd, spec, tokenizer_dir)
        except _MissingKey as e:
            missing.append(str(e.args[0]))
        else:
            with init_empty_weights():
                text = CLIPTextModel(CLIPTextConfig(**tcfg))
            parts.append(("text_encoder", text, _text_entries(text, spec.text_kind)))

    expected = {e.orig for _, _, entries in parts for e in entries}
    missing += list(dict.fromkeys(e.orig for _, _, entries in parts for e in entries if e.orig not in sd))
    skip_layer = None
    if spec.text_kind == "openclip" and spec.text_layer == "penultimate" and len(parts) == 3:
        skip_layer = f"{OPENCLIP_PREFIX}transformer.resblocks.{parts[2][1].config.num_hidden_layers}."
    unexpected = [k for k in sd if k not in expected and k not in _IGNORED_KEYS
                  and not k.startswith(_IGNORED_PREFIXES) and not (skip_layer and k.startswith(skip_layer))]
    if missing or unexpected:
        raise _mismatch(checkpoint, config, missing, unexpected)

    out: dict[str, Any] = {"text_encoder": None}
    bad: list[str] = []
    for name, module, entries in parts:
        shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        state = {}
        for e in entries:
            t = sd[e.orig]
            want = _original_shape(e, shapes[e.diff])
            if tuple(t.shape) != want:
                bad.append(f"{e.orig}: checkpoint {list(t.shape)} vs config {list(want)}")
                continue
            if e.chunk:
                t = t.chunk(e.chunk[1], dim=0)[e.chunk[0]]
            state[e.diff] = t.reshape(shapes[e.diff]).to(torch.float32).contiguous()
        if not bad:
            result = module.load_state_dict(state, strict=False, assign=True)
            if result.unexpected_keys or any(not k.endswith("position_ids") for k in result.missing_keys):
                raise RuntimeError(f"{name}: key table incomplete: {result}")  # a bug, never the user's fault
            out[name] = module.eval()
    if bad:
        raise UserError(f"cannot convert {checkpoint}: its weights do not match config {config.name}: "
                        f"{len(bad)} size mismatch{'es' * (len(bad) != 1)} ({'; '.join(bad[:3])}"
                        f"{'; …' if len(bad) > 3 else ''}); is this the config that belongs to this checkpoint?")
    if spec.scale_by_std and "scale_factor" in sd and sd["scale_factor"].numel() == 1:
        out["vae"].register_to_config(scaling_factor=float(sd["scale_factor"]))
    for m in filter(None, out.values()):
        m.requires_grad_(False)
    out["scheduler_config"] = dict(spec.scheduler_config)
    out["family"] = "text-to-image"
    return out
