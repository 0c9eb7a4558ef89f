"""Shared fixtures: tiny random-weight models built on the fly (no hub access)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message=".*torchvision.*")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny Stable-Diffusion-style diffusers pipeline folder (CLIP tokenizer, KL VAE, cross-attn UNet)."""
    from ldm_export.random_models import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("models") / "tiny_sd")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A small CLIP-format tokenizer folder (vocab.json + merges.txt + configs)."""
    from ldm_export.random_models import write_clip_tokenizer

    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    write_clip_tokenizer(folder, model_max_length=16)
    return folder
