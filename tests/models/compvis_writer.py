"""Write diffusers modules as an original CompVis / Stability checkpoint + YAML (tests only).

The inverse of :func:`ldm_export.sources.compvis.convert_checkpoint` for the configurations it supports,
built on the converter's own key table, so the tests can make original-layout checkpoints without
the original repository.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ldm_runtime.errors import UserError

from ldm_export.sources.compvis.names import (AUTOENCODER_KL, FROZEN_CLIP, FROZEN_OPENCLIP, LATENT_DIFFUSION,
                                        SAFETENSORS_SUFFIX, TORCH_SUFFIXES, UNET_MODEL, BETA_SCHEDULES, Entry,
                                        original_shape, PREDICTIONS, text_entries, unet_entries, vae_entries)



def _unexpressible(what: str) -> UserError:
    return UserError(f"cannot save in the original CompVis format: {what}")


def _plain(v: Any) -> Any:
    """Plain YAML-safe containers (diffusers configs hold tuples and FrozenDicts)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _unet_yaml(c: Any) -> dict[str, Any]:
    checks = {
        "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
        "center_input_sample": False, "downsample_padding": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
        "resnet_time_scale_shift": "default", "time_embedding_type": "positional", "class_embed_type": None,
        "addition_embed_type": None, "num_class_embeds": None, "encoder_hid_dim": None,
        "time_embedding_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "dual_cross_attention": False,
        "only_cross_attention": False, "attention_type": "default", "time_cond_proj_dim": None,
        "mid_block_scale_factor": 1, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    }
    for k, want in checks.items():
        v = c.get(k, want)
        if isinstance(v, (list, tuple)) and len(set(v)) == 1:
            v = v[0]
        if v != want:
            raise _unexpressible(f"UNet {k}={c[k]!r} (the original UNetModel has {want!r})")
    if abs(float(c.get("norm_eps", 1e-5)) - 1e-5) > 1e-12:
        raise _unexpressible(f"UNet norm_eps={c['norm_eps']} (the original uses 1e-5)")
    boc = list(c.block_out_channels)
    mc = boc[0]
    if any(b % mc for b in boc) or any(b % 32 for b in boc):
        raise _unexpressible(f"UNet block_out_channels={boc} must be multiples of the first and of 32")
    down, up = list(c.down_block_types), list(c.up_block_types)
    allowed = {"CrossAttnDownBlock2D", "DownBlock2D"}
    if set(down) - allowed or [t.replace("Down", "Up") for t in reversed(down)] != up:
        raise _unexpressible(f"UNet block types {down} / {up} (need Down/CrossAttnDown blocks mirrored by Up blocks)")
    for k in ("layers_per_block", "transformer_layers_per_block", "cross_attention_dim"):
        v = c[k]
        if isinstance(v, (list, tuple)) and len(set(v)) != 1:
            raise _unexpressible(f"UNet {k}={list(v)} (one value for all blocks)")
    if c.get("reverse_transformer_layers_per_block") is not None:
        raise _unexpressible("UNet reverse_transformer_layers_per_block")
    one = lambda v: int(v[0]) if isinstance(v, (list, tuple)) else int(v)  # noqa: E731
    heads = c.get("num_attention_heads") or c.attention_head_dim
    heads = [int(h) for h in heads] if isinstance(heads, (list, tuple)) else [int(heads)] * len(boc)
    cross = [t == "CrossAttnDownBlock2D" for t in down]
    params: dict[str, Any] = dict(
        image_size=int(c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]),
        in_channels=int(c.in_channels), out_channels=int(c.out_channels), model_channels=mc,
        attention_resolutions=[2 ** i for i, x in enumerate(cross) if x], num_res_blocks=one(c.layers_per_block),
        channel_mult=[b // mc for b in boc],
    )
    if len(set(heads)) == 1:
        params["num_heads"] = heads[0]
    else:
        per = {b // h for b, h in zip(boc, heads)}
        if len(per) != 1 or any(b % h for b, h in zip(boc, heads)):
            raise _unexpressible(f"UNet attention heads {heads} for channels {boc}: need one head count or one head width")
        params["num_head_channels"] = per.pop()
    params.update(use_spatial_transformer=True, transformer_depth=one(c.transformer_layers_per_block),
                  context_dim=one(c.cross_attention_dim),
                  use_linear_in_transformer=bool(c.use_linear_projection), use_checkpoint=False, legacy=False)
    return params


def _vae_yaml(c: Any) -> tuple[dict[str, Any], float]:
    boc = list(c.block_out_channels)
    if c.get("norm_num_groups", 32) != 32 or c.get("act_fn", "silu") != "silu":
        raise _unexpressible("VAE norm_num_groups must be 32 and act_fn silu")
    if set(c.down_block_types) != {"DownEncoderBlock2D"} or set(c.up_block_types) != {"UpDecoderBlock2D"}:
        raise _unexpressible(f"VAE block types {list(c.down_block_types)} / {list(c.up_block_types)}")
    if any(b % boc[0] or b % 32 for b in boc):
        raise _unexpressible(f"VAE block_out_channels={boc} must be multiples of the first and of 32")
    for k in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
        if c.get(k, True) is not True:
            raise _unexpressible(f"VAE {k}={c[k]}")
    if c.get("shift_factor") or c.get("latents_mean") is not None:
        raise _unexpressible("VAE shift_factor / latents_mean (no such field in the original config)")
    lat = int(c.latent_channels)
    return {
        "embed_dim": lat, "monitor": "val/rec_loss",
        "ddconfig": {
            "double_z": True, "z_channels": lat, "resolution": int(c.sample_size), "in_channels": int(c.in_channels),
            "out_ch": int(c.out_channels), "ch": boc[0], "ch_mult": [b // boc[0] for b in boc],
            "num_res_blocks": int(c.layers_per_block), "attn_resolutions": [], "dropout": 0.0,
        },
        "lossconfig": {"target": "torch.nn.Identity"},
    }, float(c.scaling_factor)


def _text_kind(text_encoder: Any) -> str:
    c = text_encoder.config
    if abs(float(c.layer_norm_eps) - 1e-5) > 1e-12:
        raise _unexpressible(f"text encoder layer_norm_eps={c.layer_norm_eps} (1e-5 in both CLIP variants)")
    if c.hidden_act == "quick_gelu":
        return "clip"
    if c.hidden_act == "gelu":
        return "openclip"
    raise _unexpressible(f"text encoder hidden_act={c.hidden_act!r} (quick_gelu: OpenAI CLIP, gelu: OpenCLIP)")


def _schedule_buffers(sched: dict[str, Any]) -> dict[str, Any]:
    """LatentDiffusion's persistent schedule buffers, as its register_schedule computes them."""
    import numpy as np
    import torch

    n = int(sched["num_train_timesteps"])
    start, end = float(sched["beta_start"]), float(sched["beta_end"])
    if sched["beta_schedule"] == "scaled_linear":
        betas = np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2
    else:
        betas = np.linspace(start, end, n, dtype=np.float64)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    acp = np.append(1.0, ac[:-1])
    pv = betas * (1.0 - acp) / (1.0 - ac)
    vals = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": acp, "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac), "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac), "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": pv, "posterior_log_variance_clipped": np.log(np.maximum(pv, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(acp) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - acp) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in vals.items()}


def _scheduler_yaml(s: dict[str, Any]) -> dict[str, Any]:
    bs = s["beta_schedule"]
    inv_bs = {v: k for k, v in BETA_SCHEDULES.items()}
    inv_pred = {v: k for k, v in PREDICTIONS.items()}
    if s.get("trained_betas") is not None or bs not in inv_bs:
        raise _unexpressible(f"scheduler beta_schedule={bs!r} (supported: {', '.join(inv_bs)})")
    pred = s["prediction_type"]
    if pred not in inv_pred:
        raise _unexpressible(f"scheduler prediction_type={pred!r}")
    out: dict[str, Any] = {}
    if pred != "epsilon":
        out["parameterization"] = inv_pred[pred]
    out.update(linear_start=float(s["beta_start"]), linear_end=float(s["beta_end"]),
               timesteps=int(s["num_train_timesteps"]))
    if bs != "scaled_linear":
        out["beta_schedule"] = inv_bs[bs]
    return out


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_original_checkpoint(unet: Any, vae: Any, text_encoder: Any, scheduler_config: dict,
                             out_ckpt: Path, out_yaml: Path) -> None:
    """Write diffusers modules as an original-layout checkpoint (``.safetensors`` or ``.ckpt``, fp32) + YAML.

    The inverse of :func:`convert_checkpoint` for the configurations it supports. ``text_encoder`` may be None
    (the checkpoint then holds no ``cond_stage_model`` weights). A quick_gelu encoder is written as
    FrozenCLIPEmbedder (SD 1.x), a gelu one as FrozenOpenCLIPEmbedder with ``layer: last`` (SD 2.x style).
    """
    import torch
    import yaml

    out_ckpt, out_yaml = Path(out_ckpt), Path(out_yaml)
    suffix = out_ckpt.suffix.lower()
    if suffix not in (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES):
        raise UserError(f"cannot save {out_ckpt}: use a {SAFETENSORS_SUFFIX} or .ckpt file name")
    # diffusers' DDIMScheduler defaults for whatever the given config leaves out
    sched = {"beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear", "num_train_timesteps": 1000,
             "prediction_type": "epsilon", **scheduler_config}
    params = _scheduler_yaml(sched)
    unet_params = _unet_yaml(unet.config)
    first_stage, scale = _vae_yaml(vae.config)
    if int(unet.config.in_channels) != int(vae.config.latent_channels):
        raise _unexpressible("UNet in_channels differs from the VAE's latent channels")

    parts: list[tuple[Any, list[Entry]]] = [(unet, unet_entries(unet)), (vae, vae_entries(vae))]
    cond: dict[str, Any] = {"target": FROZEN_CLIP}
    hints: dict[str, Any] = {}
    if text_encoder is not None:
        kind = _text_kind(text_encoder)
        if kind == "openclip":
            cond = {"target": FROZEN_OPENCLIP, "params": {"freeze": True, "layer": "last"}}
        tc = text_encoder.config
        if tc.hidden_size % 64 or tc.hidden_size // 64 != tc.num_attention_heads:
            hints = {"text_encoder": {"num_attention_heads": int(tc.num_attention_heads)}}
        parts.append((text_encoder, text_entries(text_encoder, kind)))

    sd: dict[str, Any] = {}
    fused: dict[str, list[Any]] = {}
    for module, entries in parts:
        state = module.state_dict()
        for e in entries:
            t = state[e.diff].detach().to("cpu", torch.float32)
            t = t.reshape(original_shape(e, tuple(t.shape)) if not e.chunk else t.shape)
            if e.chunk:
                fused.setdefault(e.orig, [None] * e.chunk[1])[e.chunk[0]] = t
            else:
                sd[e.orig] = t.clone().contiguous()
    for k, pieces in fused.items():
        sd[k] = torch.cat(pieces, dim=0).contiguous()
    sd.update(_schedule_buffers(sched))

    model_params: dict[str, Any] = {
        **params, "num_timesteps_cond": 1, "log_every_t": 200,
        "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": unet_params["image_size"],
        "channels": int(vae.config.latent_channels), "cond_stage_trainable": False, "conditioning_key": "crossattn",
        "monitor": "val/loss_simple_ema", "scale_factor": scale, "use_ema": False,
        "unet_config": {"target": UNET_MODEL, "params": unet_params},
        "first_stage_config": {"target": AUTOENCODER_KL, "params": first_stage},
        "cond_stage_config": cond,
    }
    doc: dict[str, Any] = {"model": {"target": LATENT_DIFFUSION, "params": model_params}}
    if hints:
        doc["ldm_export"] = hints  # ignored by the original code, read back by convert_checkpoint

    out_ckpt.parent.mkdir(parents=True, exist_ok=True)
    out_yaml.parent.mkdir(parents=True, exist_ok=True)
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        _write_atomic(out_ckpt, lambda p: save_file(sd, str(p), metadata={"format": "pt"}))
    else:
        _write_atomic(out_ckpt, lambda p: torch.save({"state_dict": sd}, p))
    text = ("# written by ldm-export: original CompVis LatentDiffusion config\n"
            + yaml.safe_dump(_plain(doc), sort_keys=False, default_flow_style=None))
    _write_atomic(out_yaml, lambda p: p.write_text(text, encoding="utf-8"))
