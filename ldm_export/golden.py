"""Golden vectors: fixed inputs and torch outputs for every component plus a short
reference trajectory, so ``ldm-run verify`` can check parity on the device without torch.

Keys in ``golden.npz``: ``<component>/in/<input>``, ``<component>/out/<output>``,
``tokenizer/input_ids``, ``trajectory/timesteps``, ``trajectory/latents`` (steps, 1, C, h, w),
``trajectory/decoded``, ``trajectory/image`` (uint8), and the request's inputs
``request/image`` / ``request/mask`` for families that take an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .export import ComponentGraph, torch_outputs
from .loading import LoadedModel
from .reference import ReferenceRun, Request, reference_generate, text_ids


@dataclass(frozen=True)
class GoldenConfig:
    prompt: str = "a red circle on the left of a blue square"
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 5
    guidance_scale: float = 7.5
    eta: float = 0.0


def golden_request(model: LoadedModel, cfg: GoldenConfig, width: int, height: int) -> Request:
    """The reference request for ``model``'s family (prompt, class, or a synthetic input image)."""
    text = model.conditioning["kind"] == "text"
    kw = dict(prompt=cfg.prompt if text else "", negative_prompt=cfg.negative_prompt if text else "",
              steps=cfg.steps, guidance_scale=cfg.guidance_scale, eta=cfg.eta, seed=cfg.seed, width=width,
              height=height)
    if model.conditioning["kind"] == "class":
        kw["class_label"] = 0
    if model.conditioning["kind"] == "class" and model.conditioning.get("null_class") is None:
        kw["guidance_scale"] = 1.0
    if model.guidance["rule"] == "never":
        kw["guidance_scale"] = 1.0
    if model.unet_concat:
        f = model.vae_factor if "low_res_image" in model.unet_concat else 1
        kw["image"] = synthetic_image(width // f, height // f, cfg.seed)
    if "mask" in model.unet_concat:
        kw["mask"] = synthetic_mask(width, height)
    return Request(**kw)


def synthetic_image(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth colourful test image (uint8 HxWx3), deterministic per seed."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    chans = [np.sin(xx / max(width, 1) * 6 + p) * np.cos(yy / max(height, 1) * 4 - p) for p in phase]
    return ((np.stack(chans, axis=-1) * 0.5 + 0.5) * 255).round().astype(np.uint8)


def synthetic_mask(width: int, height: int) -> np.ndarray:
    """A centred white rectangle (repaint) on black (keep), uint8 HxW."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    return mask


def component_inputs(model: LoadedModel, run: ReferenceRun, req: Request) -> dict[str, dict[str, np.ndarray]]:
    """A real input for every component, taken from the reference run."""
    inputs = dict(run.inputs)
    guided = "encoder_hidden_states" in run.inputs["unet"] and run.inputs["unet"]["sample"].shape[0] == 2
    if model.conditioning["kind"] == "text":
        texts = [req.negative_prompt, req.prompt] if guided else [req.prompt]
        inputs["text_encoder"] = {"input_ids": text_ids(model, texts)}
    if model.conditioning.get("via") == "context":
        labels = [model.conditioning["null_class"], req.class_label] if guided else [req.class_label]
        inputs["class_embedder"] = {"class_labels": np.array(labels, dtype=np.int64)}
    return inputs


def golden_arrays(model: LoadedModel, graphs: list[ComponentGraph], cfg: GoldenConfig, width: int,
                  height: int) -> tuple[dict[str, np.ndarray], Request]:
    req = golden_request(model, cfg, width, height)
    run = reference_generate(model, req)
    inputs = component_inputs(model, run, req)
    arrays: dict[str, np.ndarray] = {
        "trajectory/timesteps": run.timesteps,
        "trajectory/latents": np.stack(run.latents),
        "trajectory/decoded": run.decoded,
        "trajectory/image": run.image,
    }
    if "text_encoder" in inputs:
        arrays["tokenizer/input_ids"] = inputs["text_encoder"]["input_ids"]
    if req.image is not None:
        arrays["request/image"] = req.image
    if req.mask is not None:
        arrays["request/mask"] = req.mask
    for g in graphs:
        feeds = inputs[g.name]
        arrays.update({f"{g.name}/in/{k}": v for k, v in feeds.items()})
        arrays.update({f"{g.name}/out/{k}": v for k, v in torch_outputs(g, feeds).items()})
    return arrays, req


def manifest_entry(req: Request, file: str) -> dict:
    return {"file": file, "prompt": req.prompt, "negative_prompt": req.negative_prompt, "seed": req.seed,
            "steps": req.steps, "guidance_scale": req.guidance_scale, "eta": req.eta, "width": req.width,
            "height": req.height, "noise": "torch", "class_label": req.class_label}


def write_golden(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
