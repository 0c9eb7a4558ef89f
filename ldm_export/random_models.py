"""Random-weight models with real architectures, saved as diffusers folders.

Used by the tests (tiny models, seconds to build) and by the benchmarks (the
Stable Diffusion 1.x architecture). No hub access: the tokenizer is built here
from a small corpus in the CLIP vocab.json + merges.txt format.
"""

from __future__ import annotations

import json
from pathlib import Path

# The CLIP byte-level alphabet: every byte maps to a printable unicode char.
def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


_CORPUS_WORDS = (
    "a an the photo of cat dog red blue green yellow circle square triangle on left right "
    "above below small large painting astronaut riding horse mountain city night sky"
).split()


def write_clip_tokenizer(folder: Path, model_max_length: int = 77, pad_token: str = "<|endoftext|>",
                         words: list[str] | tuple[str, ...] = tuple(_CORPUS_WORDS),
                         max_merges: int | None = 150) -> None:
    """Write a small CLIP-format tokenizer (vocab.json, merges.txt, configs) to ``folder``.

    The merges are those a greedy BPE trainer learns on ``words`` (at most ``max_merges``;
    None: until every word is one token), so real multi-character tokens appear and
    prompts outside the list fall back to bytes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    while max_merges is None or len(merges) < max_merges:  # greedy BPE training on the word list
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(sorted(counts), key=lambda p: counts[p])
        merges.append(best)
        vocab.append(best[0] + best[1])
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append(out)
        words = new_words
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": pad_token,
    }))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": pad_token, "do_lower_case": True,
        "errors": "replace",
    }))


def vocab_size(tokenizer_folder: Path) -> int:
    return len(json.loads((tokenizer_folder / "vocab.json").read_text()))


TINY_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": False,
    "steps_offset": 1, "prediction_type": "epsilon", "timestep_spacing": "leading",
}


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
