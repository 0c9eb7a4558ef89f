"""Golden vectors: fixed inputs and torch outputs for every component plus a short
reference trajectory, so ``ldm-run verify`` can check parity on the device without torch.

Keys in ``golden.npz``: ``<component>/in/<input>``, ``<component>/out/<output>``,
``tokenizer/input_ids``, ``trajectory/timesteps``, ``trajectory/latents`` (steps, 1, C, h, w),
``trajectory/decoded`` and ``trajectory/image`` (uint8).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .export import ComponentGraph, torch_run
from .reference import reference_generate


@dataclass(frozen=True)
class GoldenConfig:
    prompt: str = "a red circle on the left of a blue square"
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 5
    guidance_scale: float = 7.5
    eta: float = 0.0

    def manifest_entry(self, file: str, width: int, height: int) -> dict:
        return {"file": file, "prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed,
                "steps": self.steps, "guidance_scale": self.guidance_scale, "eta": self.eta,
                "width": width, "height": height, "noise": "torch"}


def golden_arrays(pipe, graphs: list[ComponentGraph], cfg: GoldenConfig, width: int, height: int,
                  scaling_factor: float, shift_factor: float) -> dict[str, np.ndarray]:
    run = reference_generate(pipe, cfg.prompt, cfg.negative_prompt, cfg.steps, cfg.guidance_scale, cfg.eta,
                             cfg.seed, width, height)
    # The UNet's golden input is a real one: the latents after step 1 at the second timestep.
    latents1 = np.concatenate([run.latents[0]] * run.text_embeddings.shape[0])
    t1 = np.full((latents1.shape[0],), run.timesteps[min(1, len(run.timesteps) - 1)], dtype=np.float32)
    inputs = {
        "text_encoder": {"input_ids": run.input_ids},
        "unet": {"sample": latents1, "timestep": t1, "encoder_hidden_states": run.text_embeddings},
        "vae_decoder": {"latent": (run.latents[-1] / np.float32(scaling_factor)
                                   + np.float32(shift_factor)).astype(np.float32)},
        "vae_encoder": {"image": np.clip(run.decoded, -1, 1).astype(np.float32)},
    }
    arrays: dict[str, np.ndarray] = {
        "tokenizer/input_ids": run.input_ids,
        "trajectory/timesteps": run.timesteps,
        "trajectory/latents": np.stack(run.latents),
        "trajectory/decoded": run.decoded,
        "trajectory/image": run.image,
    }
    for g in graphs:
        feeds = inputs[g.name]
        arrays.update({f"{g.name}/in/{k}": v for k, v in feeds.items()})
        arrays[f"{g.name}/out/{next(iter(g.outputs))}"] = torch_run(g, feeds)
    return arrays


def write_golden(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
