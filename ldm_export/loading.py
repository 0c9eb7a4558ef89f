"""Load a trained model into one in-memory description, whatever its family or source.

Sources: a local diffusers pipeline folder (``model_index.json``; safetensors or
.bin weights) of any of the paper's families, an original CompVis/Stability
single-file checkpoint with its YAML (see :mod:`ldm_export.sources.compvis`), or
components from factories (see :mod:`ldm_export.sources.custom`).

What differs between families is recorded as data (conditioning, guidance rule,
concatenated UNet channels, decoder scaling) that ends up in the bundle manifest,
so the runtime needs no code per family.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldm_runtime.errors import UserError

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
SUPPORTED = ("a diffusers pipeline folder (model_index.json) of: " + ", ".join(SD_PIPELINES + LDM_PIPELINES)
             + "; an original .ckpt/.safetensors checkpoint with --config YAML; or a custom model .json "
             "naming component factories")


@dataclass
class LoadedModel:
    """Everything the exporter needs, independent of where the model came from."""

    family: str                  # text-to-image | unconditional | class-conditional | super-resolution | inpainting
    source: Path
    source_format: str           # diffusers | compvis | custom
    source_sha256: str
    unet: Any                    # torch modules, eval mode, fp32
    vae: Any                     # AutoencoderKL or VQModel (or a custom decoder/encoder pair, see export)
    scheduler_config: dict
    autoencoder_kind: str        # kl | vq
    conditioning: dict           # {"kind": "text", "encoder": "clip"|"ldmbert"} | {"kind": "class", …} | {"kind": "none"}
    text_encoder: Any = None
    tokenizer_dir: Path | None = None
    tokenizer_max_length: int | None = None   # forced padding length (LDMTextToImagePipeline pads to 77)
    class_embedder: Any = None
    guidance: dict = field(default_factory=lambda: {"rule": "greater_than_one", "negative_prompt": True})
    unet_concat: list = field(default_factory=list)
    decode_scale: str = "divide"  # divide | multiply_reciprocal | none (how the reference scales latents)
    reference_pipeline: Any = None  # the diffusers pipeline, when the family has one
    decoder: Any = None          # custom decoder module (latent → image), when there is no vae
    encoder: Any = None          # custom encoder module (image → latent mean), optional

    # -- derived sizes -----------------------------------------------------
    @property
    def latent_channels(self) -> int:
        if self.vae is None:
            return int(self.unet.config.in_channels)
        return int(self.vae.config.latent_channels)

    @property
    def vae_factor(self) -> int:
        if self.vae is None:
            return int(self._custom["downsample_factor"])
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def unet_downsampling(self) -> int:
        if "unet_downsampling" in self._custom:
            return int(self._custom["unet_downsampling"])
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this: the autoencoder factor × the UNet's total downsampling."""
        return self.vae_factor * self.unet_downsampling

    @property
    def scaling_factor(self) -> float:
        if self.vae is None:
            return float(self._custom["scaling_factor"])
        return float(getattr(self.vae.config, "scaling_factor", None) or 1.0)

    @property
    def shift_factor(self) -> float:
        return float(getattr(getattr(self.vae, "config", None), "shift_factor", None) or 0.0)

    @property
    def text_max_length(self) -> int:
        if self.tokenizer_max_length:
            return self.tokenizer_max_length
        return int(self.text_encoder.config.max_position_embeddings)

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @property
    def default_resolution(self) -> tuple[int, int]:
        s = self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else s
        return w * self.vae_factor, h * self.vae_factor

    @property
    def manifest_conditioning(self) -> dict:
        c = dict(self.conditioning)
        if c["kind"] == "text":
            c.update(max_length=self.text_max_length, hidden_size=self.text_hidden_size)
        return c

    _custom: dict = field(default_factory=dict)


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


def hash_folder(folder: Path) -> str:
    return hash_paths([folder])


def _describe(path: Path) -> str:
    if not path.exists():
        return "nothing (the path does not exist)"
    if path.is_file():
        return f"a file ({path.suffix or 'no extension'})"
    names = sorted(p.name for p in path.iterdir())[:6]
    return f"a folder without model_index.json (it holds: {', '.join(names) or 'nothing'})"


CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")


def load_model(path: str | Path, config: str | Path | None = None, tokenizer: str | Path | None = None,
               factories: dict[str, str | None] | None = None) -> LoadedModel:
    """Load ``path`` or raise a one-line :class:`UserError` saying what was found and what is supported."""
    path = Path(path)
    if path.suffix == ".json" and path.name != "model_index.json":
        from .sources.custom import load_custom

        return load_custom(path, factories)
    if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        if config is None:
            raise UserError(f"{path.name} is a single-file checkpoint: pass its original YAML with --config")
        return load_checkpoint(path, Path(config), Path(tokenizer) if tokenizer else None)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"cannot load {path}: found {_describe(path)}; supported: {SUPPORTED}")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"cannot load {path}: model_index.json is not valid JSON ({e})") from e
    cls = index.get("_class_name")
    if cls not in SD_PIPELINES + LDM_PIPELINES:
        raise UserError(f"cannot load {path}: it is a {cls}; supported pipelines: "
                        f"{', '.join(SD_PIPELINES + LDM_PIPELINES)}")
    missing = [p for p in REQUIRED_PARTS[cls] if not (path / p).is_dir()]
    if missing:
        raise UserError(f"cannot load {path}: the pipeline folder lacks {', '.join(m + '/' for m in missing)}")
    try:
        if cls == "LDMClassConditionalPipeline":
            model = _load_class_conditional_crossattn(path)
        else:
            model = _describe_pipeline(path, cls, _load_diffusers_pipeline(path, index))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"cannot load {path}: {str(e).splitlines()[0]}") from e
    model.source_sha256 = hash_folder(path)
    return model


def _load_diffusers_pipeline(path: Path, index: dict):
    import torch
    from diffusers import DiffusionPipeline

    extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
    with torch.no_grad():
        pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


def _scheduler_config(pipe) -> dict:
    return {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}


def _autoencoder_kind(vae) -> str:
    return "vq" if type(vae).__name__ == "VQModel" else "kl"


def _class_conditioning(unet) -> dict:
    n = int(unet.config.num_class_embeds)
    # The original cin256 model reserves the last class as the unconditional one (1000 of 1001).
    return {"kind": "class", "via": "unet", "num_classes": n, "null_class": n - 1}


def _describe_pipeline(path: Path, cls: str, pipe) -> LoadedModel:
    common = dict(source=path, source_format="diffusers", source_sha256="", reference_pipeline=pipe,
                  unet=pipe.unet, scheduler_config=_scheduler_config(pipe))
    if cls in SD_PIPELINES:
        inpaint = cls == "StableDiffusionInpaintPipeline" or pipe.unet.config.in_channels == 9
        return LoadedModel(
            family="inpainting" if inpaint else "text-to-image", vae=pipe.vae, autoencoder_kind="kl",
            conditioning={"kind": "text", "encoder": "clip"}, text_encoder=pipe.text_encoder,
            tokenizer_dir=path / "tokenizer", unet_concat=["mask", "masked_image_latents"] if inpaint else [],
            **common)
    vae = pipe.vqvae
    if cls == "LDMTextToImagePipeline":
        return LoadedModel(
            family="text-to-image", vae=vae, autoencoder_kind=_autoencoder_kind(vae),
            conditioning={"kind": "text", "encoder": "ldmbert"}, text_encoder=pipe.bert,
            tokenizer_dir=path / "tokenizer", tokenizer_max_length=77,
            guidance={"rule": "not_one", "negative_prompt": False}, decode_scale="multiply_reciprocal", **common)
    if cls == "LDMSuperResolutionPipeline":
        return LoadedModel(
            family="super-resolution", vae=vae, autoencoder_kind=_autoencoder_kind(vae),
            conditioning={"kind": "none"}, guidance={"rule": "never", "negative_prompt": False},
            unet_concat=["low_res_image"], decode_scale="none", **common)
    # LDMPipeline: unconditional, or class-conditional through the UNet's class embedding
    class_cond = getattr(pipe.unet.config, "num_class_embeds", None)
    return LoadedModel(
        family="class-conditional" if class_cond else "unconditional", vae=vae,
        autoencoder_kind=_autoencoder_kind(vae),
        conditioning=_class_conditioning(pipe.unet) if class_cond else {"kind": "none"},
        guidance={"rule": "not_one" if class_cond else "never", "negative_prompt": False},
        reference_pipeline=None if class_cond else pipe,
        **{k: v for k, v in common.items() if k != "reference_pipeline"})


def _load_class_conditional_crossattn(path: Path) -> LoadedModel:
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
    return LoadedModel(
        family="class-conditional", source=path, source_format="diffusers", source_sha256="", unet=unet, vae=vae,
        scheduler_config={k: v for k, v in dict(sched.config).items() if not k.startswith("_")},
        autoencoder_kind="vq",
        conditioning={"kind": "class", "via": "context", "num_classes": emb_cfg["num_classes"],
                      "null_class": emb_cfg.get("unconditional_class")},
        class_embedder=embedder.eval(), guidance={"rule": "not_one", "negative_prompt": False})


def load_checkpoint(checkpoint: Path, config: Path, tokenizer: Path | None) -> LoadedModel:
    from .sources.compvis import convert_checkpoint

    if tokenizer is None:
        raise UserError("an original checkpoint carries no tokenizer: pass the CLIP tokenizer folder with "
                        "--tokenizer (vocab.json + merges.txt, as in a diffusers model's tokenizer/)")
    parts = convert_checkpoint(checkpoint, config, tokenizer)
    if parts["text_encoder"] is None:
        raise UserError(f"{checkpoint.name} holds no text-encoder weights (cond_stage_model.*); "
                        "export it from a checkpoint that includes them")
    return LoadedModel(
        family=parts["family"], source=checkpoint, source_format="compvis",
        source_sha256=hash_paths([checkpoint, config]), unet=parts["unet"], vae=parts["vae"],
        scheduler_config=parts["scheduler_config"], autoencoder_kind="kl",
        conditioning={"kind": "text", "encoder": "clip"}, text_encoder=parts["text_encoder"],
        tokenizer_dir=tokenizer)
