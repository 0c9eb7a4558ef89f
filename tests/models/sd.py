"""Random-weight models with real architectures, saved as diffusers folders.

Used by the tests (tiny models, seconds to build) and by the benchmarks (the
Stable Diffusion 1.x architecture). No hub access: the tokenizer is built here
from a small corpus in the CLIP vocab.json + merges.txt format.
"""

from __future__ import annotations

import json
from pathlib import Path

from ldm_export.demo import SCHEDULER as TINY_SCHEDULER  # Stable Diffusion 1.x's DDIM config
from ldm_export.demo import bpe

CORPUS_WORDS = tuple((
    "a an the photo of cat dog red blue green yellow circle square triangle on left right "
    "above below small large painting astronaut riding horse mountain city night sky"
).split())


def write_clip_tokenizer(folder: Path, model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> None:
    """A small CLIP-format tokenizer of :data:`CORPUS_WORDS` (150 merges: real multi-character tokens, and
    prompts outside the list fall back to bytes)."""
    bpe.write_clip_tokenizer(folder, CORPUS_WORDS, model_max_length=model_max_length, pad_token=pad_token,
                             max_merges=150)


def vocab_size(tokenizer_folder: Path) -> int:
    return len(json.loads((tokenizer_folder / "vocab.json").read_text()))


def make_sd_pipeline(folder: Path, *, unet: dict, vae: dict, text: dict, seed: int = 0,
                     scheduler: dict | None = None, max_length: int = 77) -> Path:
    """Build and save a random-weight StableDiffusionPipeline folder."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tok_dir = folder / "tokenizer"
    write_clip_tokenizer(tok_dir, model_max_length=max_length)
    torch.manual_seed(seed)
    text_model = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size(tok_dir), max_position_embeddings=max_length,
        bos_token_id=vocab_size(tok_dir) - 2, eos_token_id=vocab_size(tok_dir) - 1, pad_token_id=1, **text,
    )).eval()
    unet_model = UNet2DConditionModel(**unet).eval()
    vae_model = AutoencoderKL(**vae).eval()
    pipe = StableDiffusionPipeline(
        vae=vae_model, text_encoder=text_model, tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
        unet=unet_model, scheduler=DDIMScheduler(**(scheduler or TINY_SCHEDULER)),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def make_tiny_sd(folder: Path, seed: int = 0, scheduler: dict | None = None) -> Path:
    """A tiny Stable-Diffusion-style model: every block type of SD, a few hundred KB."""
    return make_sd_pipeline(
        folder, seed=seed, scheduler=scheduler, max_length=16,
        unet=dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, norm_num_groups=8,
        ),
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1, norm_num_groups=8, sample_size=16,
        ),
        text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                  projection_dim=32),
    )


def make_sd15_architecture(folder: Path, seed: int = 0) -> Path:
    """Stable Diffusion 1.x architecture with random weights (benchmarks, slow tests)."""
    return make_sd_pipeline(
        folder, seed=seed, max_length=77,
        unet=dict(sample_size=64, cross_attention_dim=768),  # diffusers' defaults are SD 1.x's
        vae=dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, sample_size=512,
        ),
        text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                  projection_dim=768, hidden_act="quick_gelu"),
    )
