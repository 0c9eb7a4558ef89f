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

from pathlib import Path

from ldm_runtime.errors import UserError

from ...model import Conditioning, Guidance, LoadedModel, Modules, Source, hash_paths
from ..diffusers import latent_of, text_of, unet_facts
from .weights import convert_checkpoint

__all__ = ["convert_checkpoint", "load_checkpoint"]


def load_checkpoint(checkpoint: Path, config: Path, tokenizer: Path | None) -> LoadedModel:
    """An original text-to-image checkpoint + YAML (+ the CLIP tokenizer folder it was trained with)."""
    if tokenizer is None:
        raise UserError("an original checkpoint carries no tokenizer: pass the CLIP tokenizer folder with "
                        "--tokenizer (vocab.json + merges.txt, as in a diffusers model's tokenizer/)")
    parts = convert_checkpoint(checkpoint, config, tokenizer)
    if parts["text_encoder"] is None:
        raise UserError(f"{checkpoint.name} holds no text-encoder weights (cond_stage_model.*); "
                        "export it from a checkpoint that includes them")
    unet, vae, text = parts["unet"], parts["vae"], parts["text_encoder"]
    return LoadedModel(
        family=parts["family"], source=Source(checkpoint, "compvis", hash_paths([checkpoint, config])),
        modules=Modules(unet=unet, vae=vae, text_encoder=text), scheduler_config=parts["scheduler_config"],
        autoencoder_kind="kl", latent=latent_of(vae),
        conditioning=Conditioning("text", text=text_of(text, "clip", tokenizer)), guidance=Guidance(),
        **unet_facts(unet, vae))
