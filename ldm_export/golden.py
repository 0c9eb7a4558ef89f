"""Golden vectors: fixed inputs and torch outputs for every component plus a short
reference trajectory, so ``ldm-run verify`` can check parity on the device without torch.

Keys in ``golden.npz``: ``<component>/in/<input>``, ``<component>/out/<output>``,
``tokenizer/input_ids``, ``trajectory/timesteps``, ``trajectory/latents`` (steps, 1, C, h, w),
``trajectory/decoded``, ``trajectory/image`` (uint8), and the request's inputs
``request/image`` / ``request/mask`` for families that take an image.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ldm_runtime.request import Request

from .export import ComponentGraph, torch_outputs
from .model import LoadedModel
from .reference import ReferenceRun, reference_generate, text_ids


# The golden trajectory's request (its size is the bundle's smallest declared one).
GOLDEN = Request(prompt="a red circle on the left of a blue square", steps=5, guidance_scale=7.5, sampler="ddim")


def family_request(model: LoadedModel, req: Request, width: int, height: int) -> Request:
    """``req`` at ``width`` x ``height`` as ``model``'s family takes it: the prompt only for text models, a class
    (default 0) for class-conditional ones, guidance off where the family has none, a synthetic input image
    (and mask) where the family needs one. The torch reference and the runtime both run the result."""
    check_steps(model, req.steps)
    text = model.conditioning.kind == "text"
    kw: dict = dict(prompt=req.prompt if text else "", negative_prompt=req.negative_prompt if text else "",
                    width=width, height=height, class_label=None, image=None, mask=None)
    classes = model.classes
    if classes is not None:
        kw["class_label"] = 0 if req.class_label is None else req.class_label
        if classes.null_class is None:
            kw["guidance_scale"] = 1.0
    if model.guidance.rule == "never":
        kw["guidance_scale"] = 1.0
    if model.unet_concat:
        f = model.latent.downsample_factor if "low_res_image" in model.unet_concat else 1
        kw["image"] = synthetic_image(width // f, height // f, req.seed)
    if "mask" in model.unet_concat:
        kw["mask"] = synthetic_mask(width, height)
    return replace(req, **kw)


def check_steps(model: LoadedModel, steps: int) -> None:
    """Refuse a step count the model's schedule cannot take (diffusers' scheduler would fail on it mid-run):
    the runtime's own DDIM schedule says where the limit is."""
    from ldm_runtime.samplers import make_sampler

    make_sampler("ddim", dict(model.scheduler_config)).start(steps)


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
    if model.text is not None:
        texts = [req.negative_prompt, req.prompt] if guided else [req.prompt]
        inputs["text_encoder"] = {"input_ids": text_ids(model, texts)}
    if model.classes is not None and model.classes.via == "context":
        labels = [model.classes.null_class, req.class_label] if guided else [req.class_label]
        inputs["class_embedder"] = {"class_labels": np.array(labels, dtype=np.int64)}
    return inputs


def golden_arrays(model: LoadedModel, graphs: list[ComponentGraph], req: Request) -> dict[str, np.ndarray]:
    """The golden vectors of ``req`` (a :func:`family_request`): the reference trajectory, and every
    component's torch outputs on an input taken from it."""
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
    arrays.update(req.arrays())
    for g in graphs:
        feeds = inputs[g.name]
        arrays.update({f"{g.name}/in/{k}": v for k, v in feeds.items()})
        arrays.update({f"{g.name}/out/{k}": v for k, v in torch_outputs(g, feeds).items()})
    return arrays


def write_golden(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
