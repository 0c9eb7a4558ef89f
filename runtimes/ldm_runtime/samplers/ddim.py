"""DDIM sampling in numpy: Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (2020).

https://arxiv.org/abs/2010.02502

This is a torch-free port of diffusers' ``DDIMScheduler`` (and so of the original
CompVis DDIM sampler, which is diffusers' ``timestep_spacing="leading"`` with
``steps_offset=1``). It reads the same ``scheduler_config.json`` and reproduces
its timesteps exactly and its steps to float32 rounding.

Notation (variable name -> name in the paper):

- ``alpha_prod_t``          -> α_t (the paper's α is the *cumulative* product, DDPM's ᾱ_t)
- ``alpha_prod_t_prev``     -> α_{t-1}
- ``beta_prod_t``           -> 1 - α_t
- ``model_output``          -> ε_θ(x_t, t) (or v, or x_0, by ``prediction_type``)
- ``pred_epsilon``          -> ε_θ(x_t, t)
- ``pred_original_sample``  -> f_θ(x_t, t), "predicted x_0"
- ``std_dev_t``             -> σ_t(η)
- ``eta``                   -> η
- ``pred_sample_direction`` -> "direction pointing to x_t"
- ``prev_sample``           -> x_{t-1}

Numerics. diffusers computes in float32 with torch; so does this file, operation by
operation in the same order, on the schedule of :mod:`.schedule` (bit-identical
betas and ᾱ's). torch's CPU float32 ``sqrt`` is off by one ulp in ~17 % of inputs,
``np.sqrt`` is correctly rounded: that is left as is, and it is why the steps agree
to ~1e-7 relative rather than bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .base import Sampler, SamplerRun, SchedulerConfig, check_num_inference_steps, one_of
from .schedule import alphas_cumprod, make_betas, spaced_timesteps
from .thresholding import check_thresholding_ratio, threshold_sample

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

_F32 = np.float32


@dataclass(frozen=True)
class DDIMConfig(SchedulerConfig):
    """The scheduler_config.json keys a DDIM sampler reads (diffusers' names and defaults)."""

    LABEL = "ddim (DDIMScheduler)"

    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    rescale_betas_zero_snr: bool = False
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    def check(self) -> None:
        check_thresholding_ratio(self.dynamic_thresholding_ratio)


@dataclass(frozen=True)
class DDIMStepOutput:
    prev_sample: np.ndarray           # x_{t-1}, the next input to the model
    pred_original_sample: np.ndarray  # predicted x_0 (after clipping / thresholding)


# --- one DDIM step ------------------------------------------------------------------


def ddim_step(
    model_output: np.ndarray,
    sample: np.ndarray,
    alpha_prod_t: np.float32,
    alpha_prod_t_prev: np.float32,
    *,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    variance_noise: np.ndarray | None = None,
    clip_sample_range: float | None = None,
    dynamic_threshold: tuple[float, float] | None = None,
) -> DDIMStepOutput:
    """x_t -> x_{t-1}: formulas (12) and (16) of the DDIM paper. A pure function of its arguments.

    ``alpha_prod_t`` / ``alpha_prod_t_prev`` are the cumulative products α_t and α_{t-1}.
    ``clip_sample_range`` clips predicted x_0 to [-range, range] (None: no clipping);
    ``dynamic_threshold = (ratio, max_value)`` thresholds it instead (and wins over clipping).
    ``variance_noise`` ~ N(0, I) of ``sample``'s shape is required when ``eta > 0``.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    if eta > 0 and variance_noise is None:
        raise ValueError("eta > 0 needs variance_noise: draw it from the caller's generator, shape of sample")
    one_of("prediction_type", prediction_type, PREDICTION_TYPES)
    model_output = np.asarray(model_output, np.float32)
    sample = np.asarray(sample, np.float32)
    alpha_prod_t = _F32(alpha_prod_t)
    alpha_prod_t_prev = _F32(alpha_prod_t_prev)

    # 2. compute alphas, betas (step 1, the previous timestep, is the caller's: see DDIMSampler.step)
    beta_prod_t = _F32(1.0) - alpha_prod_t
    sqrt_alpha_prod_t = np.sqrt(alpha_prod_t)
    sqrt_beta_prod_t = np.sqrt(beta_prod_t)

    # 3. compute predicted original sample from predicted noise also called
    # "predicted x_0" of formula (12): x_0 = (x_t - sqrt(1 - α_t) ε) / sqrt(α_t)
    if prediction_type == "epsilon":
        pred_original_sample = (sample - sqrt_beta_prod_t * model_output) / sqrt_alpha_prod_t
        pred_epsilon = model_output
    elif prediction_type == "sample":
        pred_original_sample = model_output
        pred_epsilon = (sample - sqrt_alpha_prod_t * pred_original_sample) / sqrt_beta_prod_t
    else:  # "v_prediction", section 2.4 of Imagen Video: v = sqrt(α_t) ε - sqrt(1 - α_t) x_0
        pred_original_sample = sqrt_alpha_prod_t * sample - sqrt_beta_prod_t * model_output
        pred_epsilon = sqrt_alpha_prod_t * model_output + sqrt_beta_prod_t * sample

    # 4. clip or threshold "predicted x_0"
    if dynamic_threshold is not None:
        pred_original_sample = threshold_sample(pred_original_sample, *dynamic_threshold)
    elif clip_sample_range is not None:
        limit = _F32(clip_sample_range)
        pred_original_sample = np.clip(pred_original_sample, -limit, limit)

    # 5. compute variance: "sigma_t(η)" -> see formula (16)
    # σ_t = sqrt((1 − α_t−1)/(1 − α_t)) * sqrt(1 − α_t/α_t−1)
    beta_prod_t_prev = _F32(1.0) - alpha_prod_t_prev
    variance = (beta_prod_t_prev / beta_prod_t) * (_F32(1.0) - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = _F32(eta) * np.sqrt(variance)

    # 6. compute "direction pointing to x_t" of formula (12): sqrt(1 − α_t−1 − σ_t²) ε
    # The argument is >= 0 in exact arithmetic but can round to -1 ulp when it is ~0
    # (η = 1 with α_t = 0, i.e. a zero-terminal-SNR schedule at t = T-1, where σ_t² =
    # 1 − α_t−1): diffusers then gets NaN, on some machines; we clamp it to 0.
    direction_sq = np.maximum(_F32(1.0) - alpha_prod_t_prev - std_dev_t * std_dev_t, _F32(0.0))
    pred_sample_direction = np.sqrt(direction_sq) * pred_epsilon

    # 7. compute x_t-1 without "random noise" of formula (12): sqrt(α_t−1) x_0 + direction
    prev_sample = np.sqrt(alpha_prod_t_prev) * pred_original_sample + pred_sample_direction

    # 8. add the "random noise" σ_t ε_t of formula (12)
    if eta > 0:
        variance_noise = np.asarray(variance_noise, np.float32)
        if variance_noise.shape != sample.shape:
            raise ValueError(f"variance_noise has shape {variance_noise.shape}; expected {sample.shape}")
        prev_sample = prev_sample + std_dev_t * variance_noise

    return DDIMStepOutput(
        prev_sample=np.asarray(prev_sample, np.float32),
        pred_original_sample=np.asarray(pred_original_sample, np.float32),
    )


# --- the sampler --------------------------------------------------------------------


class DDIMSampler(Sampler):
    """A DDIM noise schedule plus its step; the numpy counterpart of diffusers' ``DDIMScheduler``."""

    name = "ddim"
    diffusers_class = "DDIMScheduler"
    config_class = DDIMConfig
    # DDIM's x_T ~ N(0, I): the initial latents are not scaled.
    init_noise_sigma = 1.0

    def __init__(self, config: DDIMConfig):
        super().__init__(config)
        self.betas = make_betas(config)
        self.alphas = (_F32(1.0) - self.betas).astype(np.float32)
        self.alphas_cumprod = alphas_cumprod(self.betas)
        # At every step DDIM looks at the previous α; the final step has none:
        # `set_alpha_to_one` sets it to 1 (x_0 exactly), else it reuses α at t = 0.
        self.final_alpha_cumprod = _F32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]

    def check_eta(self, eta: float) -> None:
        if not eta >= 0:
            raise UserError(f"bad eta; got {eta!r}; expected a value >= 0 (0: deterministic DDIM, 1: DDPM-like)")

    def _start(self, num_inference_steps: int, eta: float) -> "DDIMRun":
        return DDIMRun(self, num_inference_steps, eta)

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The timesteps to visit, descending, int64; identical to diffusers' ``set_timesteps``
        (see :func:`.schedule.spaced_timesteps`)."""
        n = check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
        cfg = self.config
        timesteps = spaced_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.steps_offset)
        return np.ascontiguousarray(timesteps.round().astype(np.int64))

    def alpha_prods(self, timestep: int, num_inference_steps: int) -> tuple[np.float32, np.float32]:
        """(α_t, α_{t-1}) for one step."""
        # 1. get previous step value (=t-1). Like diffusers, this is always t - T // n,
        # whatever the spacing: for "trailing" and "linspace" it need not be the next
        # timestep in the list.
        prev_timestep = int(timestep) - self.config.num_train_timesteps // num_inference_steps
        alpha_prod_t = self.alphas_cumprod[int(timestep)]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return alpha_prod_t, alpha_prod_t_prev

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        num_inference_steps: int,
        eta: float = 0.0,
        variance_noise: np.ndarray | None = None,
    ) -> DDIMStepOutput:
        """One DDIM step from x_t (``sample``) at ``timestep`` to x_{t-1}.

        ``eta`` = η: 0 is deterministic DDIM, 1 is DDPM-like ancestral sampling; for
        ``eta > 0`` pass ``variance_noise`` ~ N(0, I) drawn from the caller's generator.
        """
        num_inference_steps = check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
        alpha_prod_t, alpha_prod_t_prev = self.alpha_prods(timestep, num_inference_steps)
        cfg = self.config
        return ddim_step(
            model_output,
            sample,
            alpha_prod_t,
            alpha_prod_t_prev,
            prediction_type=cfg.prediction_type,
            eta=eta,
            variance_noise=variance_noise,
            clip_sample_range=cfg.clip_sample_range if cfg.clip_sample else None,
            dynamic_threshold=(cfg.dynamic_thresholding_ratio, cfg.sample_max_value) if cfg.thresholding else None,
        )


class DDIMRun(SamplerRun):
    """One DDIM run: no history; with η > 0 each step draws its noise (diffusers: ``randn_tensor``)."""

    def __init__(self, sampler: DDIMSampler, num_inference_steps: int, eta: float):
        self.sampler, self.num_inference_steps, self.eta = sampler, num_inference_steps, eta
        self.timesteps = sampler.timesteps(num_inference_steps)

    def _step(self, model_output: np.ndarray, i: int, sample: np.ndarray, generator) -> np.ndarray:
        noise = generator.randn(model_output.shape) if self.eta > 0 else None
        return self.sampler.step(model_output, int(self.timesteps[i]), sample, self.num_inference_steps,
                                 eta=self.eta, variance_noise=noise).prev_sample
