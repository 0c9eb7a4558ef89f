"""Diffusers pipeline folders (``model_index.json``) of every family of the paper, and our own
``LDMClassConditionalPipeline`` folder for the original class-embedder cin256 model.

Everything the exporter needs is read from the modules' configs here, once (see :mod:`ldm_export.model`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ldm_runtime.errors import UserError, one_line

from ..model import (Attention, Classes, FeatureMaps, Conditioning, Guidance, Latent, LoadedModel, Modules, Source, Text,
                     hash_paths, sample_size)

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
REQUIRED_PARTS = {
    "StableDiffusionPipeline": SD_PARTS, "StableDiffusionImg2ImgPipeline": SD_PARTS,
    "StableDiffusionInpaintPipeline": SD_PARTS,
    "LDMPipeline": ("unet", "vqvae", "scheduler"),
    "LDMTextToImagePipeline": ("unet", "vqvae", "bert", "tokenizer", "scheduler"),
    "LDMSuperResolutionPipeline": ("unet", "vqvae", "scheduler"),
    "LDMClassConditionalPipeline": ("unet", "vqvae", "class_embedder", "scheduler"),
}
SD_PIPELINES = tuple(k for k in REQUIRED_PARTS if k.startswith("StableDiffusion"))
LDM_PIPELINES = tuple(k for k in REQUIRED_PARTS if k.startswith("LDM"))
PIPELINES = SD_PIPELINES + LDM_PIPELINES


def pipeline_class(path: Path) -> str:
    """The pipeline class a folder's model_index.json names, checked against the supported ones."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"cannot load {path}: model_index.json is not valid JSON ({e})") from e
    cls = index.get("_class_name") if isinstance(index, dict) else None
    if cls not in PIPELINES:
        raise UserError(f"cannot load {path}: it is a {cls}; supported pipelines: {', '.join(PIPELINES)}")
    missing = [p for p in REQUIRED_PARTS[cls] if not (path / p).is_dir()]
    if missing:
        raise UserError(f"cannot load {path}: the pipeline folder lacks {', '.join(m + '/' for m in missing)}")
    return cls


def load_diffusers(path: Path) -> LoadedModel:
    """Load a diffusers pipeline folder (or an LDMClassConditionalPipeline folder)."""
    cls = pipeline_class(path)
    source = Source(path=path, format="diffusers", sha256=hash_paths([path]))
    if cls == "LDMClassConditionalPipeline":
        return _class_conditional_crossattn(path, source)
    return _describe(cls, _load_pipeline(path), source)


def _load_pipeline(path: Path):
    """diffusers' own loader; what it raises on the folder's files (a missing or corrupt weight or config
    file) is the user's to fix, everything after that is ours."""
    import torch
    from diffusers import DiffusionPipeline
    from safetensors import SafetensorError

    index = json.loads((path / "model_index.json").read_text())
    extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
    try:
        with torch.no_grad():
            pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32, **extra)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise UserError(f"cannot load {path}: {one_line(e, with_type=False)}") from e
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


def scheduler_config(config) -> dict:
    """The scheduler's config as diffusers writes it, without its bookkeeping keys, but with
    ``_use_default_values`` (which keys were defaults: ``XScheduler.from_config`` lets another scheduler
    use its own defaults for those, and so does the runtime's ``make_sampler``)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_") or k == "_use_default_values"}


def autoencoder_kind(vae) -> str:
    return "vq" if type(vae).__name__ == "VQModel" else "kl"


def latent_of(vae, decode_scale: str = "divide") -> Latent:
    c = vae.config
    return Latent(channels=int(c.latent_channels), downsample_factor=2 ** (len(c.block_out_channels) - 1),
                  scaling_factor=float(getattr(c, "scaling_factor", None) or 1.0),
                  shift_factor=float(getattr(c, "shift_factor", None) or 0.0), decode_scale=decode_scale)


def text_of(text_encoder, encoder: str, tokenizer_dir: Path, tokenizer_max_length: int | None = None) -> Text:
    c = text_encoder.config
    return Text(encoder=encoder, tokenizer_dir=tokenizer_dir,
                max_length=tokenizer_max_length or int(c.max_position_embeddings),
                hidden_size=int(c.hidden_size), vocab_size=int(c.vocab_size),
                tokenizer_max_length=tokenizer_max_length)


def unet_facts(unet, vae=None) -> dict:
    """The UNet's input channels, total downsampling and training sample size, and the levels and attention
    layers of the UNet and the autoencoder (for memory estimates), as LoadedModel fields."""
    c = unet.config
    f = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    levels = [FeatureMaps("unet", f * 2 ** i, int(ch)) for i, ch in enumerate(c.block_out_channels)]
    if vae is not None:
        levels += [FeatureMaps(part, 2 ** i, int(ch)) for part in ("vae_decoder", "vae_encoder")
                   for i, ch in enumerate(vae.config.block_out_channels)]
    return {"unet_in_channels": int(c.in_channels), "unet_downsampling": 2 ** (len(c.block_out_channels) - 1),
            "sample_size": sample_size(c.sample_size), "attention": _unet_attention(c, f) + _vae_attention(vae, f),
            "feature_maps": tuple(levels)}


def _heads(c, channels: int, level: int) -> int:
    """Attention heads at a UNet level: UNet2DConditionModel's ``attention_head_dim`` counts heads (its
    historical name), ``num_attention_heads`` overrides it; UNet2DModel's is the width per head."""
    conditional = hasattr(c, "cross_attention_dim")
    value = (getattr(c, "num_attention_heads", None) or c.attention_head_dim) if conditional else c.attention_head_dim
    value = value[level] if isinstance(value, (list, tuple)) else value
    if value is None:
        return 1
    return int(value) if conditional else max(1, channels // int(value))


def _unet_attention(c, f: int) -> tuple[Attention, ...]:
    levels = len(c.block_out_channels)
    sites = [Attention("unet", f * 2 ** i, _heads(c, ch, i)) for i, (t, ch) in
             enumerate(zip(c.down_block_types, c.block_out_channels)) if "Attn" in t]
    if getattr(c, "mid_block_type", "UNetMidBlock2DCrossAttn") is not None and \
            getattr(c, "add_attention", True) is not False:
        sites.append(Attention("unet", f * 2 ** (levels - 1), _heads(c, c.block_out_channels[-1], levels - 1)))
    return tuple(sites)


def _vae_attention(vae, f: int) -> tuple[Attention, ...]:
    """The autoencoder's mid-block attention (one head, at the latent's size) in its decoder and encoder."""
    if vae is None or getattr(vae.config, "mid_block_add_attention", True) is False:
        return ()
    return (Attention("vae_decoder", f, 1), Attention("vae_encoder", f, 1))


def _describe(cls: str, pipe, source: Source) -> LoadedModel:
    vae_module = getattr(pipe, "vae", None) or getattr(pipe, "vqvae", None)
    common = dict(source=source, scheduler_config=scheduler_config(pipe.scheduler.config),
                  scheduler_class=type(pipe.scheduler).__name__,
                  **unet_facts(pipe.unet, vae_module))
    if cls in SD_PIPELINES:
        inpaint = cls == "StableDiffusionInpaintPipeline" or pipe.unet.config.in_channels == 9
        text = text_of(pipe.text_encoder, "clip", source.path / "tokenizer")
        return LoadedModel(
            family="inpainting" if inpaint else "text-to-image", autoencoder_kind="kl",
            modules=Modules(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder),
            latent=latent_of(pipe.vae), conditioning=Conditioning("text", text=text), guidance=Guidance(),
            unet_concat=("mask", "masked_image_latents") if inpaint else (), reference_pipeline=pipe, **common)
    vae = pipe.vqvae
    kind = autoencoder_kind(vae)
    if cls == "LDMTextToImagePipeline":
        text = text_of(pipe.bert, "ldmbert", source.path / "tokenizer", tokenizer_max_length=77)
        return LoadedModel(
            family="text-to-image", autoencoder_kind=kind,
            modules=Modules(unet=pipe.unet, vae=vae, text_encoder=pipe.bert),
            latent=latent_of(vae, "multiply_reciprocal"), conditioning=Conditioning("text", text=text),
            guidance=Guidance("not_one", negative_prompt=False), reference_pipeline=pipe, **common)
    if cls == "LDMSuperResolutionPipeline":
        return LoadedModel(
            family="super-resolution", autoencoder_kind=kind, modules=Modules(unet=pipe.unet, vae=vae),
            latent=latent_of(vae, "none"), conditioning=Conditioning("none"),
            guidance=Guidance("never", negative_prompt=False), unet_concat=("low_res_image",),
            reference_pipeline=pipe, **common)
    # LDMPipeline: unconditional, or class-conditional through the UNet's class embedding
    n = getattr(pipe.unet.config, "num_class_embeds", None)
    # The original cin256 model reserves the last class as the unconditional one (1000 of 1001).
    conditioning = Conditioning("class", classes=Classes(int(n), int(n) - 1, "unet")) if n else Conditioning("none")
    return LoadedModel(
        family="class-conditional" if n else "unconditional", autoencoder_kind=kind,
        modules=Modules(unet=pipe.unet, vae=vae), latent=latent_of(vae), conditioning=conditioning,
        guidance=Guidance("not_one" if n else "never", negative_prompt=False),
        reference_pipeline=None if n else pipe,  # LDMPipeline never passes class labels: our own loop samples
        **common)


def _class_conditional_crossattn(path: Path, source: Source) -> LoadedModel:
    """Our own folder layout for the original cin256 model: class embedder → cross-attention context."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel, VQModel
    from safetensors.torch import load_file

    emb_cfg = json.loads((path / "class_embedder" / "config.json").read_text())
    embedder = torch.nn.Embedding(emb_cfg["num_classes"], emb_cfg["embed_dim"])
    embedder.load_state_dict(load_file(str(path / "class_embedder" / "model.safetensors")))
    unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=torch.float32).eval()
    vae = VQModel.from_pretrained(path / "vqvae", torch_dtype=torch.float32).eval()
    sched = DDIMScheduler.from_pretrained(path / "scheduler")
    classes = Classes(int(emb_cfg["num_classes"]), emb_cfg.get("unconditional_class"), "context",
                      embed_dim=int(emb_cfg["embed_dim"]))
    return LoadedModel(
        family="class-conditional", source=source, scheduler_config=scheduler_config(sched.config),
        scheduler_class=json.loads((path / "scheduler" / "scheduler_config.json").read_text()).get(
            "_class_name", "DDIMScheduler"),
        autoencoder_kind="vq", modules=Modules(unet=unet, vae=vae, class_embedder=embedder.eval()),
        latent=latent_of(vae), conditioning=Conditioning("class", classes=classes),
        guidance=Guidance("not_one", negative_prompt=False), **unet_facts(unet, vae))
