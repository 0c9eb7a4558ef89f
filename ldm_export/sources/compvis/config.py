"""The original YAML config (``configs/stable-diffusion/v1-inference.yaml`` and friends) → diffusers configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ldm_runtime.errors import UserError, one_line

from .names import (FROZEN_CLIP, LATENT_DIFFUSION, SUPPORTED_TARGETS, BETA_SCHEDULES, PREDICTIONS)

@dataclass
class Spec:
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
        raise UserError(f"config {path} is not a LatentDiffusion config: it is not valid YAML "
                        f"({one_line(e, with_type=False)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or "target" not in data["model"]:
        found = (f"top-level keys: {', '.join(map(str, list(data)[:6])) or 'none'}" if isinstance(data, dict)
                 else f"a {type(data).__name__}")
        raise UserError(f"config {path} is not a LatentDiffusion config: expected a top-level 'model:' with "
                        f"'target: {LATENT_DIFFUSION}' (found {found})")
    return data


W = "model.params"   # where the LatentDiffusion parameters sit in the YAML


def parse_config(path: Path) -> Spec:
    """The diffusers configs of an original LatentDiffusion YAML, or a one-line error naming the entry."""
    data = _read_yaml(path)
    cfg = _Config(path)
    model = data["model"]
    if model["target"] != LATENT_DIFFUSION:
        raise cfg.fail(f"unsupported model target {model['target']}; supported: {LATENT_DIFFUSION} "
                       "(text-to-image latent diffusion)")
    p = cfg.section(model, "params", "model")
    _check_conditioning(cfg, p)
    unet = _unet_config(cfg, p)
    vae = _vae_config(cfg, p, unet)
    kind, layer = _text_kind(cfg, p)
    hints = data.get("ldm_export") if isinstance(data.get("ldm_export"), dict) else {}
    th = hints.get("text_encoder") if isinstance(hints.get("text_encoder"), dict) else {}
    heads_hint = cfg.num(th, "num_attention_heads", "ldm_export.text_encoder", int, None)
    return Spec(unet=unet, vae=vae, text_kind=kind, text_layer=layer, text_heads=heads_hint,
                scheduler_config=_scheduler_config(cfg, p), scale_by_std=bool(p.get("scale_by_std", False)))


def _check_conditioning(cfg: _Config, p: dict) -> None:
    cond = p.get("cond_stage_config")
    if isinstance(cond, str):  # "__is_unconditional__" / "__is_first_stage__"
        raise cfg.fail(f"cond_stage_config is {cond!r}: only text-conditioned models are supported")
    ck = p.get("conditioning_key")
    if ck is None:  # LatentDiffusion's own default
        ck = "concat" if p.get("concat_mode", True) else "crossattn"
    if ck != "crossattn":
        raise cfg.fail(f"{W}.conditioning_key is {ck!r}: only 'crossattn' (text-to-image) is supported")


def _scheduler_config(cfg: _Config, p: dict) -> dict[str, Any]:
    """The DDIM config of the original sampler: leading spacing + 1, alpha_0 at the last step, no clipping."""
    param = p.get("parameterization", "eps")
    if param not in PREDICTIONS:
        raise cfg.fail(f"{W}.parameterization={param!r} is not supported (supported: {', '.join(PREDICTIONS)})")
    bs = p.get("beta_schedule", "linear")
    if bs not in BETA_SCHEDULES:
        raise cfg.fail(f"{W}.beta_schedule={bs!r} is not supported (supported: {', '.join(BETA_SCHEDULES)})")
    return {
        "beta_start": cfg.num(p, "linear_start", W, float, 1e-4),
        "beta_end": cfg.num(p, "linear_end", W, float, 2e-2),
        "beta_schedule": BETA_SCHEDULES[bs],
        "num_train_timesteps": cfg.num(p, "timesteps", W, int, 1000),
        "prediction_type": PREDICTIONS[param],
        "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False, "timestep_spacing": "leading",
    }


_UNET_FIXED = (  # UNetModel parameter, its default, the only value mapped, why
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
)


def _unet_config(cfg: _Config, p: dict) -> dict[str, Any]:
    """UNet2DConditionModel kwargs of ``unet_config``."""
    _, u = cfg.target(p, "unet_config", W)
    U = f"{W}.unet_config.params"
    for key, default, want, why in _UNET_FIXED:
        cfg.require(u, key, U, lambda v, want=want: v == want, default, why)
    mc = cfg.num(u, "model_channels", U)
    mult = cfg.ints(u, "channel_mult", U, [1, 2, 4, 8])
    if not mult or mult[0] != 1:
        raise cfg.fail(f"{U}.channel_mult={mult}: the first multiplier must be 1")
    chans = [mc * m for m in mult]
    if any(c % 32 for c in chans):
        raise cfg.fail(f"{U}: every level's channels {chans} must be a multiple of 32 (GroupNorm32)")
    attn_res = set(cfg.ints(u, "attention_resolutions", U))
    cross = [2 ** i in attn_res for i in range(len(mult))]
    heads, per_head = _attention_heads(cfg, u, U, chans, cross)
    return dict(
        sample_size=cfg.num(p, "image_size", W, int, 256),
        in_channels=cfg.num(u, "in_channels", U), out_channels=cfg.num(u, "out_channels", U),
        down_block_types=tuple("CrossAttnDownBlock2D" if x else "DownBlock2D" for x in cross),
        up_block_types=tuple("CrossAttnUpBlock2D" if x else "UpBlock2D" for x in reversed(cross)),
        block_out_channels=tuple(chans), layers_per_block=cfg.one_int(u, "num_res_blocks", U),
        cross_attention_dim=cfg.one_int(u, "context_dim", U),
        transformer_layers_per_block=cfg.one_int(u, "transformer_depth", U, 1),
        attention_head_dim=tuple(heads) if per_head else heads[0],
        use_linear_projection=bool(u.get("use_linear_in_transformer", False)),
        norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
        mid_block_type="UNetMidBlock2DCrossAttn", act_fn="silu",
    )


def _attention_heads(cfg: _Config, u: dict, U: str, chans: list[int], cross: list[bool]) -> tuple[list[int], bool]:
    """Heads per level from num_heads or num_head_channels; True when given per head (a per-level list)."""
    nh = cfg.num(u, "num_heads", U, int, -1)
    nhc = cfg.num(u, "num_head_channels", U, int, -1)
    if nhc == -1 and nh == -1:
        raise cfg.fail(f"{U} sets neither num_heads nor num_head_channels")
    heads = [c // nhc if nhc != -1 else nh for c in chans]
    for i, (c, h) in enumerate(zip(chans, heads)):  # the middle block (deepest level) always has attention
        if (cross[i] or i == len(chans) - 1) and (h <= 0 or c % h):
            raise cfg.fail(f"{U}: {c} channels do not split into {h} attention heads")
    return heads, nhc != -1


_VAE_FIXED = (  # ddconfig key, ok, default, why
    ("double_z", lambda v: v is True, True, "a KL autoencoder needs double_z"),
    ("resamp_with_conv", lambda v: v is True, True, "non-learned resampling is not mapped"),
    ("attn_type", lambda v: v in ("vanilla", "vanilla-xformers"), "vanilla", "only vanilla attention"),
    ("use_linear_attn", lambda v: not v, False, "only vanilla attention"),
    ("give_pre_end", lambda v: not v, False, "not an autoencoder output"),
    ("tanh_out", lambda v: not v, False, "tanh outputs are not mapped"),
)


def _vae_config(cfg: _Config, p: dict, unet: dict[str, Any]) -> dict[str, Any]:
    """AutoencoderKL kwargs of ``first_stage_config``, checked against the UNet's latent channels."""
    _, f = cfg.target(p, "first_stage_config", W)
    F = f"{W}.first_stage_config.params"
    dd = cfg.section(f, "ddconfig", F)
    D = f"{F}.ddconfig"
    embed = cfg.num(f, "embed_dim", F)
    z = cfg.num(dd, "z_channels", D)
    if z != embed:
        raise cfg.fail(f"{D}.z_channels={z} differs from {F}.embed_dim={embed}: not supported")
    for key, ok, default, why in _VAE_FIXED:
        cfg.require(dd, key, D, ok, default, why)
    if cfg.ints(dd, "attn_resolutions", D, []):
        raise cfg.fail(f"{D}.attn_resolutions must be [] (attention only in the middle block, as in SD)")
    ch = cfg.num(dd, "ch", D)
    vmult = cfg.ints(dd, "ch_mult", D, [1, 2, 4, 8])
    if not vmult or vmult[0] != 1:
        raise cfg.fail(f"{D}.ch_mult={vmult}: the first multiplier must be 1")
    if any(ch * m % 32 for m in vmult):
        raise cfg.fail(f"{D}: every level's channels must be a multiple of 32 (GroupNorm32)")
    channels = cfg.num(p, "channels", W, int, embed)
    in_ch, out_ch = unet["in_channels"], unet["out_channels"]
    if not (channels == embed == in_ch == out_ch):
        raise cfg.fail(f"latent channels disagree: {W}.channels={channels}, embed_dim={embed}, "
                       f"UNet in/out_channels={in_ch}/{out_ch}")
    return dict(
        in_channels=cfg.num(dd, "in_channels", D), out_channels=cfg.num(dd, "out_ch", D),
        down_block_types=("DownEncoderBlock2D",) * len(vmult), up_block_types=("UpDecoderBlock2D",) * len(vmult),
        block_out_channels=tuple(ch * m for m in vmult), layers_per_block=cfg.num(dd, "num_res_blocks", D),
        act_fn="silu", latent_channels=z, norm_num_groups=32, sample_size=cfg.num(dd, "resolution", D),
        scaling_factor=cfg.num(p, "scale_factor", W, float, 1.0),
    )


def _text_kind(cfg: _Config, p: dict) -> tuple[str, str]:
    """("clip" | "openclip", the hidden layer used: "last" | "penultimate") of ``cond_stage_config``."""
    t, c = cfg.target(p, "cond_stage_config", W)
    C = f"{W}.cond_stage_config.params"
    if t == FROZEN_CLIP:
        return "clip", cfg.require(c, "layer", C, lambda v: v == "last", "last",
                                   "only the last hidden state (with the final layer norm) is mapped")
    return "openclip", cfg.require(c, "layer", C, lambda v: v in ("last", "penultimate"), "last",
                                   "supported: last, penultimate")
