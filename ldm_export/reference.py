"""The torch reference: diffusers' own pipeline with a DDIMScheduler from the model's config.

Used for the golden trajectory written into every bundle and by ``ldm-export parity``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .loading import LoadedModel


@dataclass
class ReferenceRun:
    input_ids: np.ndarray        # (batch, L) int64, unconditional row first under guidance
    text_embeddings: np.ndarray  # (batch, L, H)
    timesteps: np.ndarray
    latents: list[np.ndarray]    # after each step, (1, C, h, w)
    decoded: np.ndarray          # decoder output (1, 3, H, W)
    image: np.ndarray            # uint8 (H, W, 3)


def reference_pipeline(model: LoadedModel):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, unet=model.unet,
        tokenizer=CLIPTokenizer.from_pretrained(model.tokenizer_dir),
        scheduler=DDIMScheduler.from_config(model.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_generate(pipe, prompt: str, negative_prompt: str, steps: int, guidance_scale: float,
                       eta: float, seed: int, width: int, height: int) -> ReferenceRun:
    """Run diffusers' pipeline and record what the runtime must reproduce."""
    import torch

    trace: list[np.ndarray] = []

    def on_step(_pipe, _i, _t, kwargs):
        trace.append(kwargs["latents"].detach().float().numpy().copy())
        return kwargs

    use_cfg = guidance_scale > 1.0
    with torch.no_grad():
        ids = pipe.tokenizer([negative_prompt, prompt] if use_cfg else [prompt], padding="max_length",
                             max_length=pipe.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        embeddings = pipe.text_encoder(ids, return_dict=False)[0]
        latents = pipe(prompt, negative_prompt=negative_prompt, num_inference_steps=steps,
                       guidance_scale=guidance_scale, eta=eta, width=width, height=height,
                       generator=torch.Generator().manual_seed(seed), output_type="latent",
                       callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"]).images
        vae = pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        decoded = vae.decode(latents / vae.config.scaling_factor + shift, return_dict=False)[0]
        image = pipe.image_processor.postprocess(decoded, output_type="np")[0]
    return ReferenceRun(
        input_ids=ids.numpy().astype(np.int64), text_embeddings=embeddings.float().numpy(),
        timesteps=pipe.scheduler.timesteps.numpy().astype(np.int64), latents=trace,
        decoded=decoded.float().numpy(), image=(image * 255).round().astype(np.uint8),
    )
