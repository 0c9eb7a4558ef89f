"""Load a trained model into one in-memory description.

Supported today: a local diffusers text-to-image pipeline folder
(``model_index.json`` with ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``; safetensors or .bin weights).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldm_runtime.errors import UserError

TEXT_TO_IMAGE_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
REQUIRED_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SUPPORTED = "a local diffusers text-to-image pipeline folder (model_index.json + unet/ vae/ text_encoder/ tokenizer/ scheduler/)"


@dataclass
class LoadedModel:
    """Everything the exporter needs, independent of where the model came from."""

    family: str                 # "text-to-image"
    source: Path
    source_format: str          # "diffusers"
    source_sha256: str
    unet: Any                   # torch modules, eval mode, fp32
    vae: Any
    text_encoder: Any
    tokenizer_dir: Path
    scheduler_config: dict
    autoencoder_kind: str       # "kl"

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this: the VAE factor × the UNet's total downsampling."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def text_max_length(self) -> int:
        return int(self.text_encoder.config.max_position_embeddings)

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @property
    def default_resolution(self) -> tuple[int, int]:
        s = self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else s
        return w * self.vae_factor, h * self.vae_factor


def hash_folder(folder: Path) -> str:
    """sha256 over the relative paths and contents of every file, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def _describe(path: Path) -> str:
    if not path.exists():
        return "nothing (the path does not exist)"
    if path.is_file():
        return f"a file ({path.suffix or 'no extension'})"
    names = sorted(p.name for p in path.iterdir())[:6]
    return f"a folder without model_index.json (it holds: {', '.join(names) or 'nothing'})"


def load_model(path: str | Path) -> LoadedModel:
    """Load ``path`` or raise a one-line :class:`UserError` saying what was found and what is supported."""
    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"cannot load {path}: found {_describe(path)}; supported: {SUPPORTED}")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"cannot load {path}: model_index.json is not valid JSON ({e})") from e
    cls = index.get("_class_name")
    if cls not in TEXT_TO_IMAGE_PIPELINES:
        raise UserError(f"cannot load {path}: it is a {cls}; supported pipelines: "
                        f"{', '.join(TEXT_TO_IMAGE_PIPELINES)}")
    missing = [p for p in REQUIRED_PARTS if not (path / p).is_dir()]
    if missing:
        raise UserError(f"cannot load {path}: the pipeline folder lacks {', '.join(m + '/' for m in missing)}")
    sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    try:
        with torch.no_grad():
            unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=torch.float32).eval()
            vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=torch.float32).eval()
            text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=torch.float32).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot load {path}: {str(e).splitlines()[0]}") from e
    return LoadedModel(
        family="text-to-image", source=path, source_format="diffusers", source_sha256=hash_folder(path),
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer_dir=path / "tokenizer",
        scheduler_config={k: v for k, v in sched.items() if not k.startswith("_")},
        autoencoder_kind="kl",
    )
