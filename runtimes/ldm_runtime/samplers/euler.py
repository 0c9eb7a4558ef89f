"""Euler sampling in numpy: Karras, Aittala, Aila & Laine, "Elucidating the Design Space of
Diffusion-Based Generative Models" (EDM, NeurIPS 2022), Algorithm 2. https://arxiv.org/abs/2206.00364

A port of diffusers' ``EulerDiscreteScheduler``. The model is seen as a denoiser D(x; σ)
of x = x_0 + σ n, and sampling integrates the probability-flow ODE dx/dσ = (x − D(x; σ))/σ
with Euler steps from σ_max down to the final σ. Algorithm 2's "churn" (γ > 0: add
noise to raise σ_i to σ̂_i = (γ + 1) σ_i first) is off unless asked for (``Churn``);
with γ = 0 this is Algorithm 2 without its second-order correction, as diffusers.

Notation (variable -> paper):

==========================  =====================================================
``sigmas``                  σ_0 > σ_1 > … > σ_n (σ_n = 0 or σ_min: ``final_sigmas_type``)
``sample``                  x_i, with x_0 ~ N(0, σ_0² I) (``init_noise_sigma``; for
                            "leading" spacing diffusers uses sqrt(σ_0² + 1))
``scale_model_input``       c_in(σ) x = x / sqrt(σ² + 1), the UNet's input (EDM Table 1, VP)
``gamma``, ``sigma_hat``    γ_i and σ̂_i = (γ_i + 1) σ_i (Algorithm 2, lines 4-6)
``pred_original_sample``    D(x̂_i; σ̂_i), the denoised estimate
``derivative``              d_i = (x̂_i − D(x̂_i; σ̂_i)) / σ̂_i  (line 7)
``dt``                      σ_{i+1} − σ̂_i  (line 8: x_{i+1} = x̂_i + dt · d_i)
==========================  =====================================================

The σ's come from the discrete schedule (:mod:`.schedule`), interpolated at the spaced
timesteps, or Karras et al.'s eq. (5) ramp between its ends (``use_karras_sigmas``,
the UNet's timesteps then interpolated back from σ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Sampler, SamplerRun, SchedulerConfig
from .schedule import (alphas_cumprod, final_sigma, karras_sigmas, make_betas, sigma_to_t,
                       sigmas_from_alphas_cumprod, spaced_timesteps)

_F32 = np.float32
_SUPPORTED = ("not implemented here (supported: interpolation_type linear, timestep_type discrete, "
              "use_karras_sigmas); try the scheduler's default")


@dataclass(frozen=True)
class EulerConfig(SchedulerConfig):
    """The scheduler_config.json keys ``EulerDiscreteScheduler`` reads, with its defaults."""

    LABEL = "euler (EulerDiscreteScheduler)"
    PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "original_sample")

    timestep_spacing: str = "linspace"
    interpolation_type: str = "linear"
    use_karras_sigmas: bool = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    timestep_type: str = "discrete"
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: str = "zero"
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False

    def check(self) -> None:
        self.refuse_unless("interpolation_type", "linear", _SUPPORTED)
        self.one_of("timestep_type", ("discrete", "continuous"))
        if self.timestep_type == "continuous" and self.prediction_type == "v_prediction":
            # diffusers then feeds the UNet 0.25 log σ instead of t (its only effect)
            self.refuse_unless("timestep_type", "discrete", _SUPPORTED + " with v_prediction")
        self.refuse_unless("use_exponential_sigmas", False, _SUPPORTED)
        self.refuse_unless("use_beta_sigmas", False, _SUPPORTED)
        self.one_of("final_sigmas_type", ("zero", "sigma_min"))


@dataclass(frozen=True)
class Churn:
    """Algorithm 2's stochasticity: γ_i = min(S_churn/n, √2 − 1) where S_tmin ≤ σ_i ≤ S_tmax, else 0."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0


def init_noise_sigma(sigmas: np.ndarray, timestep_spacing: str) -> float:
    """The scale of x_0 ~ N(0, s² I): σ_max, or sqrt(σ_max² + 1) for "leading" spacing (as diffusers)."""
    max_sigma = sigmas.max()
    if timestep_spacing in ("linspace", "trailing"):
        return float(max_sigma)
    return float(np.sqrt(max_sigma * max_sigma + _F32(1.0)))


def denoised(model_output, sample, sigma: np.float32, sigma_hat: np.float32, prediction_type: str) -> np.ndarray:
    """D(x; σ) from the UNet's output: ε (x − σ̂ ε), v (EDM's c_skip x + c_out v for VP), or x_0 itself."""
    if prediction_type == "epsilon":
        return sample - sigma_hat * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / np.sqrt(sigma * sigma + _F32(1.0))) + (sample / (sigma * sigma + _F32(1.0)))
    return model_output


def euler_step(model_output, sample, sigma: np.float32, sigma_next: np.float32, prediction_type: str,
               gamma: float = 0.0, noise: np.ndarray | None = None, s_noise: float = 1.0) -> np.ndarray:
    """Algorithm 2, lines 4-8 (γ = 0 skips the churn and needs no noise). A pure function of its arguments."""
    model_output = np.asarray(model_output, np.float32)
    sample = np.asarray(sample, np.float32)
    sigma, sigma_next = _F32(sigma), _F32(sigma_next)
    # 1. σ̂_i = (γ_i + 1) σ_i; x̂_i = x_i + sqrt(σ̂_i² − σ_i²) ε_i, ε_i ~ N(0, S_noise² I)
    sigma_hat = sigma * _F32(gamma + 1)
    if gamma > 0:
        eps = noise * _F32(s_noise)
        sample = sample + eps * np.sqrt(sigma_hat * sigma_hat - sigma * sigma)
    # 2. d_i = (x̂_i − D(x̂_i; σ̂_i)) / σ̂_i
    pred_original_sample = denoised(model_output, sample, sigma, sigma_hat, prediction_type)
    derivative = (sample - pred_original_sample) / sigma_hat
    # 3. x_{i+1} = x̂_i + (σ_{i+1} − σ̂_i) d_i
    dt = sigma_next - sigma_hat
    return sample + derivative * dt


class EulerSampler(Sampler):
    """The numpy counterpart of diffusers' ``EulerDiscreteScheduler``."""

    name = "euler"
    diffusers_class = "EulerDiscreteScheduler"
    config_class = EulerConfig

    def __init__(self, config: EulerConfig, churn: Churn = Churn()):
        super().__init__(config)
        self.churn = churn
        self.alphas_cumprod = alphas_cumprod(make_betas(config), zero_snr_floor=config.rescale_betas_zero_snr)
        self.train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)

    def _start(self, num_inference_steps: int, eta: float) -> "EulerRun":
        timesteps, sigmas = self.schedule(num_inference_steps)
        return EulerRun(self.config, timesteps, sigmas, self.churn)

    def schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps float32, σ's float32 with one more, the final σ), as diffusers' ``set_timesteps``."""
        cfg = self.config
        # 1. spaced timesteps (float32, the fractions of "linspace" kept) and σ there
        timesteps = spaced_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.steps_offset)
        timesteps = timesteps.astype(np.float32)
        sigmas = np.interp(timesteps, np.arange(0, len(self.train_sigmas)), self.train_sigmas)
        if cfg.use_karras_sigmas:
            # 2. Karras σ's between those ends, and the timesteps they correspond to
            sigma_min = cfg.sigma_min if cfg.sigma_min is not None else sigmas[-1].item()
            sigma_max = cfg.sigma_max if cfg.sigma_max is not None else sigmas[0].item()
            sigmas = karras_sigmas(sigma_min, sigma_max, n)
            log_sigmas = np.log(self.train_sigmas)
            timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
        # 3. the σ after the last step
        sigmas = np.concatenate([sigmas, [final_sigma(cfg.final_sigmas_type, self.alphas_cumprod)]])
        return timesteps.astype(np.float32), sigmas.astype(np.float32)


class SigmaRun(SamplerRun):
    """A run over σ's: x_0 scaled by σ_max, the UNet's input by 1/sqrt(σ² + 1)."""

    def __init__(self, config: SchedulerConfig, timesteps: np.ndarray, sigmas: np.ndarray):
        self.config, self.timesteps, self.sigmas = config, timesteps, sigmas
        self.init_noise_sigma = init_noise_sigma(sigmas, config.timestep_spacing)

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        sigma = self.sigmas[i]
        return (np.asarray(sample, np.float32) / np.sqrt(sigma * sigma + _F32(1.0))).astype(np.float32)


class EulerRun(SigmaRun):
    def __init__(self, config: EulerConfig, timesteps: np.ndarray, sigmas: np.ndarray, churn: Churn):
        super().__init__(config, timesteps, sigmas)
        self.churn = churn

    def _step(self, model_output: np.ndarray, i: int, sample: np.ndarray, generator) -> np.ndarray:
        c, sigma = self.churn, self.sigmas[i]
        gamma = min(c.s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if c.s_tmin <= sigma <= c.s_tmax else 0.0
        noise = generator.randn(model_output.shape) if gamma > 0 else None
        return euler_step(model_output, sample, sigma, self.sigmas[i + 1], self.config.prediction_type,
                          gamma, noise, c.s_noise)
