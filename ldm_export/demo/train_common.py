"""Shared pieces of the demo model's training: configs, the log, the schedule, tensors (see train.py)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from ldm_runtime.metrics import psnr as psnr_of


IMAGE_SIZE = 32
MAX_LENGTH = 16
LATENT_CHANNELS = 8  # 8x8x8 latents: 4 channels did not reach 30 dB PSNR within the CPU budget

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1, norm_num_groups=16, sample_size=IMAGE_SIZE, mid_block_add_attention=False,
)

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
    # transformer blocks (self- + cross-attention) at the 4 x 4 level and in the mid block only: at 8 x 8
    # (64 tokens) they took half of a CPU training step (docs/demo_model.md)
    block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
    attention_head_dim=4, norm_num_groups=8,
)

TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                   projection_dim=64)


class Logger:
    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict = {"autoencoder": [], "diffusion": [], "events": []}
        self.t0 = time.time()

    def log(self, section: str, **kw) -> None:
        kw["time_s"] = round(time.time() - self.t0, 1)
        self.data[section].append(kw)
        if section == "events":
            print(f"[{kw['time_s']:7.1f}s] " + " ".join(f"{k}={v}" for k, v in kw.items() if k != "time_s"), flush=True)

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1))


def lr_at(step: int, total: int, base: float, warmup: int, final_frac: float = 0.1) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def adamw(params, *, lr: float, weight_decay: float):
    """AdamW with the fused kernel: one call per step instead of a dozen small ops per tensor.

    The models are small (about 300 weight tensors), so per-tensor overhead is a tenth of a CPU step.
    """
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), fused=True)


def to_tensor(images: np.ndarray):
    """uint8 images (N, H, W, 3) → float32 tensor (N, 3, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def psnr(a, b) -> float:
    """PSNR in dB of [-1, 1] tensors (``a`` clamped), i.e. of the images on [0, 1]."""
    return psnr_of(a.clamp(-1, 1).detach().numpy(), b.detach().numpy(), data_range=2.0)
