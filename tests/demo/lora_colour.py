"""A LoRA trained briefly on the demo model to shift a colour: red shapes are drawn blue.

Training data: the demo grammar's single-object prompts naming red, each with a ground-truth image of the
same scene rendered blue (:func:`ldm_export.demo.shapes.render_prompt`). PEFT LoRA layers on the UNet's
attention, the demo model's own diffusion loss (epsilon, DDPM noise), a few hundred AdamW steps; saved with
diffusers' ``save_lora_weights``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ldm_export.demo import MODEL_DIR
from ldm_export.demo.shapes import render_prompt

COLOURS_FROM, COLOURS_TO = "red", "blue"
PROMPTS = tuple(f"a {COLOURS_FROM} {shape}{pos}" for shape in ("circle", "square", "triangle")
                for pos in ("", " on the left", " on the right", " at the top", " at the bottom", " in the center"))


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    images = [render_prompt(p.replace(COLOURS_FROM, COLOURS_TO), rng) for p in prompts]
    return prompts, np.stack(images)


def train_colour_lora(out: Path, *, steps: int = 300, batch: int = 16, rank: int = 8, seed: int = 0) -> Path:
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR, safety_checker=None, requires_safety_checker=False)
    prompts, images = _data(256, seed)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        context = pipe.text_encoder(ids)[0]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    pipe.unet.add_adapter(config)
    params = [p for n, p in pipe.unet.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(seed + 1)
    pipe.unet.train()
    for _ in range(steps):
        idx = torch.randint(0, len(prompts), (batch,), generator=gen)
        noise = torch.randn(latents[idx].shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        pred = pipe.unet(sched.add_noise(latents[idx], noise, t), t, encoder_hidden_states=context[idx]).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out = Path(out)
    StableDiffusionPipeline.save_lora_weights(out.parent, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                              weight_name=out.name, unet_lora_adapter_metadata=config.to_dict())
    return out


def blue_fraction(images: list[np.ndarray]) -> tuple[float, float]:
    """(fraction of images whose largest blob is blue, fraction whose largest blob is red), by the demo
    model's adherence checker's blob segmentation and hue classes."""
    from ldm_export.demo.adherence import find_blobs

    largest = [max(find_blobs(im), key=lambda b: b.area, default=None) for im in images]
    colours = [b.colour if b is not None else None for b in largest]
    return colours.count(COLOURS_TO) / len(images), colours.count(COLOURS_FROM) / len(images)
