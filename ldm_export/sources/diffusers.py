"""Diffusers pipeline folders (``model_index.json``) of every family of the paper, and our own
``LDMClassConditionalPipeline`` folder for the original class-embedder cin256 model.

Everything the exporter needs is read from the modules' configs here, once (see :mod:`ldm_export.model`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ldm_runtime.errors import UserError

from ..model import (Classes, Conditioning, Guidance, Latent, LoadedModel, Modules, Source, Text, hash_paths,
                     sample_size)

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
    import torch
    from diffusers import DiffusionPipeline

    index = json.loads((path / "model_index.json").read_text())
    extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
    with torch.no_grad():
        pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


def scheduler_config(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


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


def unet_facts(unet) -> dict:
    """The UNet's input channels, total downsampling and training sample size, as LoadedModel fields."""
    c = unet.config
    return {"unet_in_channels": int(c.in_channels), "unet_downsampling": 2 ** (len(c.block_out_channels) - 1),
            "sample_size": sample_size(c.sample_size)}


def _describe(cls: str, pipe, source: Source) -> LoadedModel:
    common = dict(source=source, scheduler_config=scheduler_config(pipe.scheduler.config), **unet_facts(pipe.unet))
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
        autoencoder_kind="vq", modules=Modules(unet=unet, vae=vae, class_embedder=embedder.eval()),
        latent=latent_of(vae), conditioning=Conditioning("class", classes=classes),
        guidance=Guidance("not_one", negative_prompt=False), **unet_facts(unet))
