"""Text-to-image generation from a bundle, knowing nothing about backends.

tokenize → text encoder → DDIM loop with classifier-free guidance → decoder → image.
The order in which noise is drawn follows diffusers' StableDiffusionPipeline, so
a seed gives the image the PyTorch pipeline gives with that seed.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .bundle import Bundle
from .errors import NonFiniteOutput, UserError
from .noise import make_generator
from .runners import Runner, make_runner
from .sampler import DDIMConfig, DDIMSampler, guidance
from .tokenizer import ClipTokenizer


@dataclass(frozen=True)
class GenerateConfig:
    prompt: str
    negative_prompt: str = ""
    steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    seed: int = 0
    width: int | None = None   # None: the bundle's default resolution
    height: int | None = None
    noise: str = "torch"       # "torch": torch.randn-compatible stream; "numpy": numpy's own


@dataclass
class GenerateResult:
    image: np.ndarray                  # uint8, (H, W, 3)
    decoded: np.ndarray                # float32 decoder output, (1, 3, H, W), range about [-1, 1]
    timesteps: np.ndarray
    latents: list[np.ndarray] = field(default_factory=list)  # after each step, when traced
    seconds: dict[str, float] = field(default_factory=dict)  # per component, plus "total"

    @property
    def overhead_seconds(self) -> float:
        """Time spent outside component calls: tokenizer, sampler, noise, copies."""
        return self.seconds["total"] - sum(v for k, v in self.seconds.items() if k != "total")


class Components:
    """Owns one runner per component. In low-memory mode only one is resident at a time."""

    def __init__(self, bundle: Bundle, backend: str = "onnxruntime", low_memory: bool = False,
                 **runner_options):
        self.bundle = bundle
        self.low_memory = low_memory
        self.seconds: dict[str, float] = {}
        self._runners: dict[str, Runner] = {
            name: make_runner(backend, name, bundle.path(spec["file"]), spec, low_memory=low_memory,
                              **runner_options)
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


class Pipeline:
    def __init__(self, bundle: Bundle, components: Components):
        self.bundle = bundle
        self.components = components
        m = bundle.manifest
        self.sampler = DDIMSampler(DDIMConfig.from_scheduler_config(m["scheduler"]))
        self.tokenizer = (ClipTokenizer.from_bundle(bundle.path(m["tokenizer"]["file"]), m["tokenizer"])
                          if bundle.has_text_encoder else None)

    # -- checks ------------------------------------------------------------
    def resolve_size(self, width: int | None, height: int | None) -> tuple[int, int]:
        res = self.bundle.manifest["resolution"]
        w = res["default"][0] if width is None else width
        h = res["default"][1] if height is None else height
        k = res["multiple_of"]
        if w % k or h % k or w <= 0 or h <= 0:
            raise UserError(f"resolution {w}x{h} is not a multiple of {k} (the autoencoder's factor "
                            f"{self.bundle.manifest['latent']['downsample_factor']} times the UNet's "
                            f"downsampling); try {max(k, round(w / k) * k)}x{max(k, round(h / k) * k)}")
        (wmin, hmin), (wmax, hmax) = res["min"], res["max"]
        if not (wmin <= w <= wmax and hmin <= h <= hmax):
            raise UserError(f"resolution {w}x{h} is outside the bundle's range {wmin}x{hmin} … {wmax}x{hmax}; "
                            f"rebuild with --resolution {w}x{h}")
        return w, h

    # -- stages ------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, cfg: bool) -> np.ndarray:
        """Text embeddings, unconditional half first when guidance is on (as diffusers)."""
        if self.tokenizer is None:
            raise UserError("this bundle has no text encoder, so it takes no prompt")
        texts = [negative_prompt, prompt] if cfg else [prompt]
        ids = self.tokenizer.encode(texts)
        with self.components.use("text_encoder") as te:
            return self.run_batch(te, {"input_ids": ids}, where="encoding the prompt")

    def run_batch(self, runner: Runner, feeds: dict[str, np.ndarray], where: str) -> np.ndarray:
        """Run a batch at once, or one sample at a time when the component's batch is fixed to 1."""
        out_name = next(iter(runner.spec["outputs"]))
        n = next(iter(feeds.values())).shape[0]
        if runner.fixed_batch() == 1 and n > 1:
            parts = [self.components.run(runner, {k: v[i:i + 1] for k, v in feeds.items()}, where)[out_name]
                     for i in range(n)]
            return np.concatenate(parts, axis=0)
        return self.components.run(runner, feeds, where)[out_name]

    def denoise(self, latents: np.ndarray, context: np.ndarray, cfg: GenerateConfig, timesteps, generator,
                trace: list | None, progress) -> np.ndarray:
        use_cfg = context.shape[0] == 2
        with self.components.use("unet") as unet:
            for i, t in enumerate(timesteps):
                model_in = np.concatenate([latents, latents]) if use_cfg else latents
                feeds = {"sample": model_in, "timestep": np.full((model_in.shape[0],), t, dtype=np.float32),
                         "encoder_hidden_states": context}
                out = self.run_batch(unet, feeds, where=f"step {i + 1}/{len(timesteps)} (t={int(t)})")
                noise_pred = guidance(out[0:1], out[1:2], cfg.guidance_scale) if use_cfg else out
                noise = generator.randn(latents.shape) if cfg.eta > 0 else None
                latents = self.sampler.step(noise_pred, int(t), latents, cfg.steps, eta=cfg.eta,
                                            variance_noise=noise).prev_sample.astype(np.float32)
                if trace is not None:
                    trace.append(latents.copy())
                if progress is not None:
                    progress.update(1)
        return latents

    def decode(self, latents: np.ndarray) -> np.ndarray:
        lat = self.bundle.manifest["latent"]
        z = (latents / np.float32(lat["scaling_factor"]) + np.float32(lat["shift_factor"])).astype(np.float32)
        with self.components.use("vae_decoder") as dec:
            return self.components.run(dec, {"latent": z}, "decoding")["image"]

    # -- the whole job -----------------------------------------------------
    def generate(self, cfg: GenerateConfig, trace: bool = False, progress=None) -> GenerateResult:
        start = time.perf_counter()
        self.components.seconds.clear()
        width, height = self.resolve_size(cfg.width, cfg.height)
        use_cfg = cfg.guidance_scale > 1.0
        context = self.encode_prompt(cfg.prompt, cfg.negative_prompt, use_cfg)
        timesteps = self.sampler.timesteps(cfg.steps)
        lat = self.bundle.manifest["latent"]
        f = lat["downsample_factor"]
        generator = make_generator(cfg.noise, cfg.seed)
        # DDIM's init_noise_sigma is 1: the initial latents are the raw normal draw.
        latents = generator.randn((1, lat["channels"], height // f, width // f))
        steps: list[np.ndarray] | None = [] if trace else None
        latents = self.denoise(latents, context, cfg, timesteps, generator, steps, progress)
        decoded = self.decode(latents)
        seconds = dict(self.components.seconds, total=time.perf_counter() - start)
        return GenerateResult(image=to_uint8(decoded), decoded=decoded, timesteps=timesteps,
                              latents=steps or [], seconds=seconds)

