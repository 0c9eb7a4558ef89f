"""Images of diffusers' pipeline (the oracle) and of ldm-runtime, same prompt, seed and DDIM settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROMPT = "a red circle on the left"
STEPS = 8
GUIDANCE = 7.5


def diffusers_pipe(model: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_fused(model: Path, loras: list[tuple[Path, float]]):
    """diffusers' pipeline with the (UNet-only) LoRAs loaded as a user loads them (``load_lora_weights``) and
    fused at their scales."""
    pipe = diffusers_pipe(model)
    names = [f"a{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
    pipe.fuse_lora(components=["unet"], adapter_names=names)
    pipe.unload_lora_weights()
    return pipe


def diffusers_image(pipe, seed: int = 0, eta: float = 0.0, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    import torch

    out = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, eta=eta, width=size[0], height=size[1],
               output_type="np", generator=torch.Generator().manual_seed(seed))
    return (out.images[0] * 255).round().astype(np.uint8)


def runtime_pipeline(bundle: Path, adapters=()):
    from ldm_runtime.bundle import open_bundle
    from ldm_runtime.pipeline import Components, Pipeline

    b = open_bundle(bundle)
    pipe = Pipeline(b, Components(b))
    if adapters:
        pipe.components.apply_adapters(list(adapters))
    return pipe


def runtime_image(pipe, seed: int = 0, eta: float = 0.0, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    from ldm_runtime.request import Request

    req = Request(prompt=PROMPT, steps=STEPS, guidance_scale=GUIDANCE, eta=eta, seed=seed, width=size[0],
                  height=size[1], sampler="ddim")
    return pipe.generate(req).image


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())
