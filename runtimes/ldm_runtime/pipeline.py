"""Generation from a bundle, knowing nothing about backends.

condition (prompt → text encoder, class label → embedding, or nothing) → initial noise →
extra UNet input channels (low-resolution image; inpainting mask + masked-image latents) →
sampling loop (DDIM, PNDM, DPM-Solver++, Euler, Euler ancestral) with classifier-free guidance →
decoder → image.

What differs between the paper's model families is data in the manifest (which
conditioning, which guidance rule, which channels are concatenated, how latents
are scaled before decoding), not code paths per family. The order in which noise
is drawn follows the diffusers pipeline of each family, so a seed gives the image
the PyTorch pipeline gives with that seed.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from .bundle import Bundle
from .errors import BundleError, NonFiniteOutput, UserError, one_line
from .noise import make_generator
from .request import Request
from .resolution import check_multiple
from .runners import Runner, RunnerOptions, check_backend, default_backend, make_runner
from .samplers import Sampler, SamplerRun, guidance, make_sampler
from .tokenizer import ClipTokenizer


@dataclass
class GenerateResult:
    image: np.ndarray                  # uint8, (H, W, 3)
    decoded: np.ndarray                # float32 decoder output, (1, 3, H, W), range about [-1, 1]
    timesteps: np.ndarray              # the UNet's timestep at each call
    latents: list[np.ndarray] = field(default_factory=list)  # after each UNet call, when traced
    seconds: dict[str, float] = field(default_factory=dict)  # per component, plus "total"

    @property
    def overhead_seconds(self) -> float:
        """Time spent outside component calls: tokenizer, sampler, noise, copies."""
        return self.seconds["total"] - sum(v for k, v in self.seconds.items() if k != "total")


class Components:
    """Owns one runner per component. In low-memory mode only one is resident at a time.

    ``backend`` None: the backend the bundle was built for (:func:`ldm_runtime.runners.default_backend`)."""

    def __init__(self, bundle: Bundle, backend: str | None = None, options: RunnerOptions = RunnerOptions()):
        self.bundle = bundle
        self.backend = backend or default_backend(bundle.manifest)
        check_backend(bundle.manifest, self.backend)
        self.low_memory = options.low_memory
        self.seconds: dict[str, float] = {}
        self._adapted: set[str] = set()   # the components running with swapped-in adapter weights
        self._runners: dict[str, Runner] = {
            name: make_runner(self.backend, name, bundle.path(spec["file"]), spec, options)
            for name, spec in bundle.manifest["components"].items()
        }

    def runner(self, name: str) -> Runner:
        if name not in self._runners:
            self.bundle.component(name)  # raises the user-facing error
        return self._runners[name]

    @contextmanager
    def use(self, name: str) -> Iterator[Runner]:
        """Load ``name`` (releasing the others first in low-memory mode) for a stage."""
        if self.low_memory:
            for other, r in self._runners.items():
                if other != name:
                    r.release()
        runner = self.runner(name).load()
        try:
            yield runner
        finally:
            if self.low_memory:
                runner.release()

    def run(self, runner: Runner, feeds: dict[str, np.ndarray], where: str = "") -> dict[str, np.ndarray]:
        """Run with timing and a NaN/Inf check that names the component and the step."""
        start = time.perf_counter()
        out = runner.run(feeds)
        self.seconds[runner.name] = self.seconds.get(runner.name, 0.0) + time.perf_counter() - start
        for key, value in out.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                bad = int(np.size(value) - np.isfinite(value).sum())
                raise NonFiniteOutput(f"{runner.name} produced {bad} NaN/Inf values in '{key}'"
                                      f"{' at ' + where if where else ''}; the model or its precision "
                                      "overflows on this input")
        return out

    def apply_adapters(self, given: list) -> None:
        """Swap in the adapter packs ``given`` ((folder, scale) pairs; adapters add), computed from the bundle's
        weights (:mod:`ldm_runtime.adapters`); components adapted before and not now go back to their own.
        A backend that cannot swap weights refuses before any pack is read."""
        from .adapters import open_adapters
        from .runners import runner_class

        refusal = runner_class(self.backend).ADAPTER_REFUSAL
        if refusal is not None and given:
            raise UserError(f"--adapter: {refusal}")
        stack = open_adapters(self.bundle, given)
        now = set(stack.components)
        for name in sorted(now | self._adapted):
            self.runner(name).swap_weights(stack.weights(name) if name in now else {})
        self._adapted = now

    def load_all(self, names: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder")) -> None:
        """Make the components that generation uses resident (nothing in low-memory mode)."""
        if not self.low_memory:
            for name in names:
                if name in self._runners:
                    self._runners[name].load()

    def release_all(self) -> None:
        for r in self._runners.values():
            r.release()


def to_uint8(decoded: np.ndarray) -> np.ndarray:
    """Decoder output (1, 3, H, W) in [-1, 1] → uint8 (H, W, 3), as diffusers postprocesses."""
    image = np.clip(decoded[0].astype(np.float32) / 2 + 0.5, 0.0, 1.0)
    return (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)


GUIDANCE_RULES = {
    "greater_than_one": lambda g: g > 1.0,   # StableDiffusion*Pipeline
    "not_one": lambda g: g != 1.0,           # LDMTextToImagePipeline
    "never": lambda g: False,                # unconditional, super-resolution
}


DEFAULT_GUIDANCE_SCALE = 7.5  # Stable Diffusion's; for bundles that record no default_scale of their own


def guidance_of(manifest: dict) -> dict:
    """The manifest's guidance rule and default scale; text bundles written before the key existed guide when
    scale > 1, at 7.5."""
    default = {"rule": "greater_than_one" if manifest["conditioning"]["kind"] in ("text", "class") else "never",
               "negative_prompt": manifest["conditioning"]["kind"] == "text",
               "default_scale": DEFAULT_GUIDANCE_SCALE}
    return {**default, **manifest.get("guidance", {})}


class Pipeline:
    def __init__(self, bundle: Bundle, components: Components):
        self.bundle = bundle
        self.components = components
        m = bundle.manifest
        self.samplers: dict[str | None, Sampler] = {}  # by Request.sampler, made on first use
        try:  # the golden trajectory's sampler, from the manifest's scheduler config: refused here, not mid-run
            self.sampler_run(Request(steps=1, sampler="ddim"))
        except (UserError, TypeError, ValueError) as e:  # a value of the right name but the wrong kind
            raise BundleError(f"manifest.json: 'scheduler' cannot be used: {one_line(e, with_type=False)}") from e
        self.conditioning = m["conditioning"]
        self.guidance = guidance_of(m)
        self.concat = m.get("unet_concat", [])
        self.tokenizer = (ClipTokenizer.from_bundle(bundle.path(m["tokenizer"]["file"]), m["tokenizer"])
                          if bundle.has_text_encoder else None)

    # -- checks ------------------------------------------------------------
    def resolve_size(self, width: int | None, height: int | None) -> tuple[int, int]:
        res = self.bundle.manifest["resolution"]
        w = res["default"][0] if width is None else width
        h = res["default"][1] if height is None else height
        check_multiple(w, h, res["multiple_of"], self.bundle.manifest["latent"]["downsample_factor"])
        (wmin, hmin), (wmax, hmax) = res["min"], res["max"]
        if res.get("sizes") == "declared" and [w, h] not in res["declared"]:
            raise UserError(f"resolution {w}x{h} is not one this bundle serves: its programs take only "
                            f"{', '.join(f'{a}x{b}' for a, b in res['declared'])} (Core ML enumerated shapes); "
                            f"rebuild with --resolution {w}x{h}")
        if not (wmin <= w <= wmax and hmin <= h <= hmax):
            raise UserError(f"resolution {w}x{h} is outside the bundle's range {wmin}x{hmin} … {wmax}x{hmax}; "
                            f"rebuild with --resolution {w}x{h}")
        return w, h

    def resolved(self, req: Request) -> Request:
        """``req`` with the bundle's defaults filled in (the guidance scale)."""
        return req if req.guidance_scale is not None else replace(req, guidance_scale=self.guidance["default_scale"])

    def check(self, req: Request) -> tuple[int, int]:
        """Refuse in one line everything about ``req`` that can be refused before a component runs: the
        numbers, inputs the family does not take, the step count, the size. Returns the output size."""
        req = self.resolved(req)
        req.check()
        family, kind = self.bundle.manifest["family"], self.conditioning["kind"]
        if kind != "text" and (req.prompt or req.negative_prompt):
            raise UserError(f"this bundle is {family} and takes no prompt")
        if req.negative_prompt and not self.guidance["negative_prompt"]:
            raise UserError("this model's reference pipeline has no negative prompt; leave --negative-prompt out")
        if kind != "class" and req.class_label is not None:
            raise UserError(f"this bundle is {family} and takes no class label")
        if kind == "class":
            self.class_labels(req.class_label, GUIDANCE_RULES[self.guidance["rule"]](req.guidance_scale))
        if not self.concat and (req.image is not None or req.mask is not None):
            raise UserError(f"this bundle is {family} and takes no input image or mask")
        if "low_res_image" in self.concat and req.mask is not None:
            raise UserError("this super-resolution bundle takes no mask")
        self.sampler_run(req)  # the sampler's own checks: its options, eta, the step count
        return self.output_size(req)

    def output_size(self, req: Request) -> tuple[int, int]:
        """The image size to generate: from the input image where the family takes one."""
        f = self.bundle.manifest["latent"]["downsample_factor"]
        if "low_res_image" in self.concat:
            if req.image is None:
                raise UserError("this super-resolution bundle needs a low-resolution input image (--image)")
            h, w = req.image.shape[:2]
            return self.resolve_size(w * f, h * f)
        if "mask" in self.concat:
            if req.image is None or req.mask is None:
                raise UserError("this inpainting bundle needs an image and a mask (--image, --mask)")
            if req.mask.shape[:2] != req.image.shape[:2]:
                raise UserError(f"the mask is {req.mask.shape[1]}x{req.mask.shape[0]} but the image is "
                                f"{req.image.shape[1]}x{req.image.shape[0]}; they must be the same size")
            h, w = req.image.shape[:2]
            if (req.width, req.height) not in ((None, None), (w, h)):
                raise UserError(f"--width/--height {req.width}x{req.height} differ from the image's {w}x{h}; "
                                "resize the image and mask instead")
            return self.resolve_size(w, h)
        return self.resolve_size(req.width, req.height)

    def sampler_run(self, req: Request) -> SamplerRun:
        """A fresh run of the sampler ``req`` asks for, on the bundle's scheduler config (the manifest's
        ``scheduler`` section; its class from ``scheduler_class``, or the config's own ``_class_name``)."""
        req.check()
        if req.sampler not in self.samplers:
            m = self.bundle.manifest
            scheduler_class = m.get("scheduler_class", m["scheduler"].get("_class_name"))
            self.samplers[req.sampler] = make_sampler(req.sampler, m["scheduler"], scheduler_class)
        return self.samplers[req.sampler].start(req.steps, eta=req.eta)

    # -- stages ------------------------------------------------------------
    def run_batch(self, runner: Runner, feeds: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
        """Run a batch at once, or one sample at a time when the component's batch is fixed to 1."""
        n = next(iter(feeds.values())).shape[0]
        if runner.fixed_batch() == 1 and n > 1:
            parts = [self.components.run(runner, {k: v[i:i + 1] for k, v in feeds.items()}, where)
                     for i in range(n)]
            return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
        return self.components.run(runner, feeds, where)

    def run_component(self, name: str, feeds: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
        """One batch through component ``name``, loading it for the call (see :meth:`Components.use`)."""
        with self.components.use(name) as runner:
            return self.run_batch(runner, feeds, where)

    def encode_prompt(self, prompt: str, negative_prompt: str, guided: bool) -> np.ndarray:
        """Text embeddings, unconditional half first when guidance is on (as diffusers)."""
        if self.tokenizer is None:
            raise UserError("this bundle has no text encoder, so it takes no prompt")
        if negative_prompt and not self.guidance["negative_prompt"]:
            raise UserError("this model's reference pipeline has no negative prompt; leave --negative-prompt out")
        texts = [negative_prompt, prompt] if guided else [prompt]
        ids = self.tokenizer.encode(texts)
        return self.run_component("text_encoder", {"input_ids": ids}, "encoding the prompt")["text_embeddings"]

    def class_labels(self, label: int | None, guided: bool) -> np.ndarray:
        n, null = self.conditioning["num_classes"], self.conditioning.get("null_class")
        if label is None:
            raise UserError(f"this class-conditional bundle needs --class-label (0 … {n - 1})")
        if not 0 <= label < n:
            raise UserError(f"class label {label} is out of range; this model has classes 0 … {n - 1}")
        if guided and null is None:
            raise UserError("this class-conditional model has no unconditional class, so it cannot use "
                            "guidance; pass --guidance 1")
        return np.array([null, label] if guided else [label], dtype=np.int64)

    def condition(self, req: Request, use_cfg: bool) -> dict[str, np.ndarray]:
        """The UNet's conditioning inputs for the batch (unconditional row first under guidance)."""
        kind = self.conditioning["kind"]
        if kind == "text":
            return {"encoder_hidden_states": self.encode_prompt(req.prompt, req.negative_prompt, use_cfg)}
        if req.prompt or req.negative_prompt:
            raise UserError(f"this bundle is {self.bundle.manifest['family']} and takes no prompt")
        if kind == "class":
            labels = self.class_labels(req.class_label, use_cfg)
            if self.conditioning.get("via") == "context":
                context = self.run_component("class_embedder", {"class_labels": labels}, "embedding the class")
                return {"encoder_hidden_states": context["context"]}
            return {"class_labels": labels}
        if req.class_label is not None:
            raise UserError(f"this bundle is {self.bundle.manifest['family']} and takes no class label")
        return {}

    def concat_inputs(self, req: Request, latent_hw: tuple[int, int], generator) -> np.ndarray | None:
        """Channels concatenated to the latents at every step, drawn after the initial noise (as diffusers)."""
        if not self.concat:
            return None
        if "low_res_image" in self.concat:
            return image_to_model(req.image)
        lat = self.bundle.manifest["latent"]
        image = image_to_model(req.image)
        mask = binarize_mask(req.mask)                                   # (1, 1, H, W), 1 = repaint
        masked = (image * (mask < 0.5)).astype(np.float32)
        with self.components.use("vae_encoder") as enc:
            runner_out = self.components.run(enc, {"image": masked}, "encoding the masked image")
        mean, std = runner_out["latent_mean"], runner_out["latent_std"]
        sample = mean + std * generator.randn(mean.shape)                # DiagonalGaussian.sample, same draw
        masked_latents = (np.float32(lat["scaling_factor"]) * sample).astype(np.float32)
        small_mask = resize_nearest(mask, latent_hw)
        return np.concatenate([small_mask, masked_latents], axis=1)

    def denoise(self, latents: np.ndarray, cond: dict[str, np.ndarray], extra: np.ndarray | None,
                req: Request, use_cfg: bool, run: SamplerRun, generator, trace: list | None,
                progress) -> np.ndarray:
        with self.components.use("unet") as unet:
            wanted = unet.spec["inputs"]
            for i, t in enumerate(run.timesteps):
                model_in = np.concatenate([latents, latents]) if use_cfg else latents
                model_in = run.scale_model_input(model_in, i)  # before the extra channels, as diffusers
                if extra is not None:
                    model_in = np.concatenate([model_in, np.concatenate([extra] * model_in.shape[0])], axis=1)
                feeds = {"sample": model_in, "timestep": np.full((model_in.shape[0],), t, dtype=np.float32),
                         **{k: v for k, v in cond.items() if k in wanted}}
                where = f"step {i + 1}/{len(run.timesteps)} (t={float(t):g})"
                out = self.run_batch(unet, feeds, where)["model_output"]
                noise_pred = guidance(out[0:1], out[1:2], req.guidance_scale) if use_cfg else out
                latents = run.step(noise_pred, i, latents, generator)
                if trace is not None:
                    trace.append(latents.copy())
                if progress is not None:
                    progress.update(1)
        return latents

    def decoder_input(self, latents: np.ndarray) -> np.ndarray:
        """Latents → decoder input, with the arithmetic of the family's reference pipeline."""
        lat = self.bundle.manifest["latent"]
        how = lat.get("decode_scale", "divide")
        if how == "divide":
            z = latents / np.float32(lat["scaling_factor"]) + np.float32(lat["shift_factor"])
        elif how == "multiply_reciprocal":
            z = np.float32(1.0 / lat["scaling_factor"]) * latents
        else:
            z = latents
        return z.astype(np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        with self.components.use("vae_decoder") as dec:
            return self.components.run(dec, {"latent": self.decoder_input(latents)}, "decoding")["image"]

    # -- the whole job -----------------------------------------------------
    def generate(self, req: Request, trace: bool = False, progress=None) -> GenerateResult:
        start = time.perf_counter()
        self.components.seconds.clear()
        req = self.resolved(req)
        width, height = self.check(req)
        use_cfg = GUIDANCE_RULES[self.guidance["rule"]](req.guidance_scale)
        cond = self.condition(req, use_cfg)
        run = self.sampler_run(req)
        lat = self.bundle.manifest["latent"]
        f = lat["downsample_factor"]
        generator = make_generator(req.noise, req.seed)
        # x_T ~ N(0, σ² I): the sampler's init_noise_sigma (1 for DDIM, PNDM, DPM-Solver++; σ_max for Euler)
        latents = generator.randn((1, lat["channels"], height // f, width // f)) * np.float32(run.init_noise_sigma)
        extra = self.concat_inputs(req, (height // f, width // f), generator)
        steps: list[np.ndarray] | None = [] if trace else None
        latents = self.denoise(latents, cond, extra, req, use_cfg, run, generator, steps, progress)
        decoded = self.decode(latents)
        seconds = dict(self.components.seconds, total=time.perf_counter() - start)
        return GenerateResult(image=to_uint8(decoded), decoded=decoded, timesteps=run.timesteps,
                              latents=steps or [], seconds=seconds)


def image_to_model(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) → float32 (1, 3, H, W) in [-1, 1], as diffusers' image processors do."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(f"expected an RGB uint8 image (H, W, 3); got {image.dtype} {image.shape}")
    x = image.astype(np.float32) / np.float32(255.0)
    return (np.float32(2.0) * x - np.float32(1.0)).transpose(2, 0, 1)[None].copy()


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """uint8 mask (H, W) or (H, W, 3) → float32 (1, 1, H, W) of 0/1 (white, ≥ 0.5, means repaint)."""
    if mask.ndim == 3:  # PIL's convert("L"): ITU-R 601-2 luma in 16-bit fixed point
        r, g, b = (mask[..., i].astype(np.int64) for i in range(3))
        mask = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
    m = mask.astype(np.float32) / np.float32(255.0)
    return (m >= 0.5).astype(np.float32)[None, None]


def resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch.nn.functional.interpolate(x, size, mode='nearest'): source index floor(i * in / out)."""
    h, w = x.shape[-2:]
    rows = np.floor(np.arange(size[0]) * (h / size[0])).astype(int)
    cols = np.floor(np.arange(size[1]) * (w / size[1])).astype(int)
    return x[..., rows[:, None], cols[None, :]]
