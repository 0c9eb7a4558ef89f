"""Euler ancestral sampling in numpy: the Euler step of Karras et al. 2022 (EDM) split into a
deterministic step down to σ_down and fresh noise of σ_up, as in k-diffusion's
``sample_euler_ancestral`` (Crowson), which follows DDPM's ancestral sampling (Ho et al. 2020).

A port of diffusers' ``EulerAncestralDiscreteScheduler``. Going from σ_from to σ_to, the
ancestral step keeps the marginal N(x_0, σ_to²) while adding noise:

    σ_up   = sqrt(σ_to² (σ_from² − σ_to²) / σ_from²)
    σ_down = sqrt(σ_to² − σ_up²)
    x_to   = x + (σ_down − σ_from) d + σ_up z,   d = (x − D(x; σ_from)) / σ_from,  z ~ N(0, I)

Every step draws z (``randn`` of the model output's shape), the last one too, where
σ_to = 0 makes σ_up = 0: so a seed gives diffusers' image.

Notation (variable -> paper):

============================  =======================================================
``sigma_from``, ``sigma_to``  σ_i, σ_{i+1}: the schedule's σ at the spaced timesteps, then 0
``pred_original_sample``      D(x; σ_i), the denoised estimate (ε or v prediction)
``derivative``                d = (x − D(x; σ_i)) / σ_i, the probability-flow ODE's dx/dσ
``sigma_up``                  σ_up, the standard deviation of the fresh noise z
``sigma_down``                σ_down, where the deterministic Euler step lands
============================  =======================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Sampler, SchedulerConfig
from .euler import SigmaRun, denoised
from .schedule import alphas_cumprod, make_betas, sigmas_from_alphas_cumprod, spaced_timesteps

_F32 = np.float32


@dataclass(frozen=True)
class EulerAncestralConfig(SchedulerConfig):
    """The scheduler_config.json keys ``EulerAncestralDiscreteScheduler`` reads, with its defaults."""

    LABEL = "euler-a (EulerAncestralDiscreteScheduler)"
    PREDICTION_TYPES = ("epsilon", "v_prediction")  # diffusers: "sample" is not implemented

    timestep_spacing: str = "linspace"
    rescale_betas_zero_snr: bool = False


def ancestral_sigmas(sigma_from: np.float32, sigma_to: np.float32) -> tuple[np.float32, np.float32]:
    """(σ_up, σ_down): σ_down² + σ_up² = σ_to², with σ_up the noise of the DDPM posterior."""
    to2, from2 = sigma_to * sigma_to, sigma_from * sigma_from
    sigma_up = np.sqrt(to2 * (from2 - to2) / from2)
    sigma_down = np.sqrt(to2 - sigma_up * sigma_up)
    return sigma_up, sigma_down


def euler_ancestral_step(model_output, sample, sigma_from: np.float32, sigma_to: np.float32, noise: np.ndarray,
                         prediction_type: str) -> np.ndarray:
    """One ancestral step from σ_from to σ_to with noise z. A pure function of its arguments."""
    model_output = np.asarray(model_output, np.float32)
    sample = np.asarray(sample, np.float32)
    sigma_from, sigma_to = _F32(sigma_from), _F32(sigma_to)
    # 1. D(x; σ) and the ODE's direction d = (x − D) / σ
    pred_original_sample = denoised(model_output, sample, sigma_from, sigma_from, prediction_type)
    sigma_up, sigma_down = ancestral_sigmas(sigma_from, sigma_to)
    derivative = (sample - pred_original_sample) / sigma_from
    # 2. Euler down to σ_down
    dt = sigma_down - sigma_from
    prev_sample = sample + derivative * dt
    # 3. and back up to σ_to with fresh noise
    return prev_sample + np.asarray(noise, np.float32) * sigma_up


class EulerAncestralSampler(Sampler):
    """The numpy counterpart of diffusers' ``EulerAncestralDiscreteScheduler``."""

    name = "euler-a"
    diffusers_class = "EulerAncestralDiscreteScheduler"
    config_class = EulerAncestralConfig

    def __init__(self, config: EulerAncestralConfig):
        super().__init__(config)
        self.alphas_cumprod = alphas_cumprod(make_betas(config), zero_snr_floor=config.rescale_betas_zero_snr)
        self.train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)

    def _start(self, num_inference_steps: int, eta: float) -> "EulerAncestralRun":
        timesteps, sigmas = self.schedule(num_inference_steps)
        return EulerAncestralRun(self.config, timesteps, sigmas)

    def schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps float32, σ's float32 ending at 0), as diffusers' ``set_timesteps``."""
        cfg = self.config
        timesteps = spaced_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.steps_offset)
        timesteps = timesteps.astype(np.float32)
        sigmas = np.interp(timesteps, np.arange(0, len(self.train_sigmas)), self.train_sigmas)
        return timesteps, np.concatenate([sigmas, [0.0]]).astype(np.float32)


class EulerAncestralRun(SigmaRun):
    def _step(self, model_output: np.ndarray, i: int, sample: np.ndarray, generator) -> np.ndarray:
        noise = generator.randn(model_output.shape)  # drawn at every step, as diffusers
        return euler_ancestral_step(model_output, sample, self.sigmas[i], self.sigmas[i + 1], noise,
                                    self.config.prediction_type)
