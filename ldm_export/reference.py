"""The torch reference for every family.

Where diffusers has a pipeline for the family (StableDiffusion*, LDM*), that pipeline
*is* the reference: it is run unchanged with the request's scheduler (DDIM unless
``req.sampler`` names another: the diffusers class of that runtime sampler) made from the
model's config, and hooks record what the runtime must reproduce (latents after every step, the
UNet's inputs at step 2, or at every step for calibration sets, the decoder's input
and output). Class-conditional models and custom modules have no diffusers pipeline;
they use :func:`_own_loop`, the original sampler's algorithm written with diffusers'
scheduler.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import numpy as np

from ldm_runtime.request import Request

from .model import LoadedModel


@dataclass
class ReferenceRun:
    timesteps: np.ndarray
    latents: list[np.ndarray]           # after each step, (1, C, h, w)
    decoded: np.ndarray                 # decoder output (1, 3, H, W)
    image: np.ndarray                   # uint8 (H, W, 3)
    inputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # component → a real input
    unet_calls: list[dict[str, np.ndarray]] = field(default_factory=list)  # UNet inputs in call order: the
    # first two calls, or every call when run with record_all=True (one call per DDIM step)


def _np(t):
    return t.detach().float().numpy().copy() if t.is_floating_point() else t.detach().numpy().copy()


def text_ids(model: LoadedModel, texts: list[str]) -> np.ndarray:
    """Token ids exactly as the reference pipeline tokenizes (transformers)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.text.tokenizer_dir)
    return tok(texts, padding="max_length", max_length=model.text.max_length, truncation=True,
               return_tensors="np").input_ids.astype(np.int64)


class _Recorder:
    """Hooks on the scheduler, the UNet and the autoencoder of a pipeline."""

    def __init__(self, scheduler, unet, vae, unet_extra: tuple[str, ...], generator=None, record_all=False):
        self.latents: list[np.ndarray] = []
        self.unet_calls: list[dict] = []
        self.decoder_in = self.decoder_out = self.encoder_in = None
        self._undo = []
        step = scheduler.step

        @functools.wraps(step)  # pipelines inspect step's signature to decide whether to pass eta/generator
        def record_step(*a, **k):
            if generator is not None and k.get("eta", 0) > 0:
                # LDMPipeline, LDMTextToImagePipeline and LDMSuperResolutionPipeline pass eta but not their
                # generator to the step, so at eta > 0 diffusers draws from torch's global RNG and a seed
                # does not reproduce. The reference passes the pipeline's generator, as StableDiffusion does.
                k.setdefault("generator", generator)
            out = step(*a, **k)
            self.latents.append(_np(out[0] if isinstance(out, tuple) else out.prev_sample))
            return out

        self._patch(scheduler, "step", record_step)

        def record_unet(_m, args, kwargs):
            if record_all or len(self.unet_calls) < 2:
                sample, t = args[0], args[1] if len(args) > 1 else kwargs["timestep"]
                feeds = {"sample": _np(sample),
                         "timestep": np.full((sample.shape[0],), float(t), dtype=np.float32)}
                feeds.update({k: _np(kwargs[k]) for k in unet_extra})
                self.unet_calls.append(feeds)

        self._undo.append(unet.register_forward_pre_hook(record_unet, with_kwargs=True).remove)
        if vae is None:  # custom decoder: the own loop records its input and output itself
            return
        decode, encode = vae.decode, vae.encode

        @functools.wraps(decode)
        def record_decode(z, *a, **k):
            out = decode(z, *a, **k)
            self.decoder_in, self.decoder_out = _np(z), _np(out[0] if isinstance(out, tuple) else out.sample)
            return out

        @functools.wraps(encode)
        def record_encode(x, *a, **k):
            self.encoder_in = _np(x)
            return encode(x, *a, **k)

        self._patch(vae, "decode", record_decode)
        self._patch(vae, "encode", record_encode)

    def _patch(self, obj, name, fn):
        setattr(obj, name, fn)
        self._undo.append(lambda: delattr(obj, name))

    def close(self):
        for undo in reversed(self._undo):
            undo()


def _unet_extra(model: LoadedModel) -> tuple[str, ...]:
    if model.text is not None or (model.classes is not None and model.classes.via == "context"):
        return ("encoder_hidden_states",)
    return ("class_labels",) if model.classes is not None else ()


def _pipeline_call(model: LoadedModel, req: Request, generator) -> dict:
    from PIL import Image

    common = dict(num_inference_steps=req.steps, eta=req.eta, generator=generator, output_type="np")
    family = model.family
    if family == "super-resolution":
        return dict(image=Image.fromarray(req.image), **common)
    if family == "unconditional":
        return dict(batch_size=1, **common)
    if model.text is not None and model.text.encoder == "ldmbert":
        return dict(prompt=req.prompt, guidance_scale=req.guidance_scale, height=req.height, width=req.width,
                    **common)
    kw = dict(prompt=req.prompt, negative_prompt=req.negative_prompt, guidance_scale=req.guidance_scale,
              height=req.height, width=req.width, **common)
    if family == "inpainting":
        kw.update(image=Image.fromarray(req.image), mask_image=Image.fromarray(req.mask))
    return kw


def reference_scheduler(model: LoadedModel, sampler: str | None):
    """diffusers' scheduler of the runtime sampler ``sampler`` (None: DDIM), from the model's config."""
    import diffusers

    from ldm_runtime.samplers import SAMPLERS

    return getattr(diffusers, SAMPLERS[sampler or "ddim"].diffusers_class).from_config(dict(model.scheduler_config))


def reference_generate(model: LoadedModel, req: Request, record_all: bool = False) -> ReferenceRun:
    """Run the family's reference sampler and record what the runtime must reproduce; with
    ``record_all``, the UNet's inputs at every step too (``run.unet_calls``)."""
    import torch

    if req.guidance_scale is None or req.width is None or req.height is None:  # our bug, not the user's
        raise ValueError(f"the reference needs a complete request (golden.family_request); got {req}")
    if model.reference_pipeline is None:
        return _own_loop(model, req, record_all)
    pipe = model.reference_pipeline
    pipe.scheduler = reference_scheduler(model, req.sampler)
    vae = getattr(pipe, "vae", None) or pipe.vqvae
    generator = torch.Generator().manual_seed(req.seed)
    rec = _Recorder(pipe.scheduler, pipe.unet, vae, _unet_extra(model), generator, record_all)
    try:
        with torch.no_grad():
            images = pipe(**_pipeline_call(model, req, generator)).images
    finally:
        rec.close()
    return _finish(model, pipe.scheduler.timesteps, rec, np.asarray(images)[0])


def _finish(model: LoadedModel, timesteps, rec: _Recorder, image01: np.ndarray) -> ReferenceRun:
    """Collect the recorded tensors into a run; the golden inputs of every component come from it."""
    unet_in = rec.unet_calls[min(1, len(rec.unet_calls) - 1)]  # a real step-2 input
    inputs = {"unet": unet_in, "vae_decoder": {"latent": rec.decoder_in.astype(np.float32)}}
    enc_in = rec.encoder_in if rec.encoder_in is not None else np.clip(rec.decoder_out, -1, 1)
    inputs["vae_encoder"] = {"image": enc_in.astype(np.float32)}
    return ReferenceRun(timesteps=timesteps.numpy().astype(np.int64), latents=rec.latents,
                        decoded=rec.decoder_out, image=(image01 * 255).round().astype(np.uint8), inputs=inputs,
                        unet_calls=rec.unet_calls)


def _own_loop(model: LoadedModel, req: Request, record_all: bool = False) -> ReferenceRun:
    """The sampling loop of the original repository, written with diffusers' scheduler (DDIM, or the
    request's), for models that have no diffusers pipeline (class-conditional, custom modules). Draws noise
    in the same order as diffusers' pipelines; classifier-free guidance with the unconditional row first when
    the family's rule (written out here, independently of the runtime's table) turns it on."""
    import torch

    m = model.modules
    scheduler = reference_scheduler(model, req.sampler)
    accepts = inspect.signature(scheduler.step).parameters
    rec = _Recorder(scheduler, m.unet, m.vae, _unet_extra(model), record_all=record_all)
    rule = model.guidance.rule
    guided = (rule == "greater_than_one" and req.guidance_scale > 1) or (rule == "not_one" and req.guidance_scale != 1)
    extra = _own_conditioning(model, req, guided)
    f = model.latent.downsample_factor
    g = torch.Generator().manual_seed(req.seed)
    try:
        with torch.no_grad():
            latents = torch.randn((1, model.latent.channels, req.height // f, req.width // f), generator=g)
            scheduler.set_timesteps(req.steps)
            latents = latents * scheduler.init_noise_sigma
            step_kw = {k: v for k, v in (("eta", req.eta), ("generator", g)) if k in accepts}
            for t in scheduler.timesteps:
                x = scheduler.scale_model_input(torch.cat([latents, latents]) if guided else latents, t)
                out = m.unet(x, t, **extra, return_dict=False)[0]
                if guided:
                    e_null, e_cond = out.chunk(2)
                    out = e_null + req.guidance_scale * (e_cond - e_null)
                latents = scheduler.step(out, t, latents, **step_kw).prev_sample
            z = latents / model.latent.scaling_factor
            if m.vae is None:
                decoded = m.decoder(z)
                rec.decoder_in, rec.decoder_out = _np(z), _np(decoded)
            else:
                decoded = m.vae.decode(z, return_dict=False)[0]
            image = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[0]
    finally:
        rec.close()
    return _finish(model, scheduler.timesteps, rec, image)


def _own_conditioning(model: LoadedModel, req: Request, guided: bool) -> dict:
    """The UNet's conditioning keyword arguments for :func:`_own_loop` (unconditional row first)."""
    import torch

    with torch.no_grad():
        if model.text is not None:
            ids = text_ids(model, [req.negative_prompt, req.prompt] if guided else [req.prompt])
            return {"encoder_hidden_states": model.modules.text_encoder(torch.from_numpy(ids))[0]}
        if model.classes is not None:
            c = model.classes
            labels = torch.tensor([c.null_class, req.class_label] if guided else [req.class_label])
            if c.via == "context":
                return {"encoder_hidden_states": model.modules.class_embedder(labels)[:, None, :]}
            return {"class_labels": labels}
    return {}
