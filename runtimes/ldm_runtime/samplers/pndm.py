"""PNDM / PLMS sampling in numpy: Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods for Diffusion
Models on Manifolds" (ICLR 2022). https://arxiv.org/abs/2202.09778

A port of diffusers' ``PNDMScheduler``, the scheduler Stable Diffusion 1.x ships with
(``skip_prk_steps=True``: PLMS only). Each step is the paper's *transfer part* φ, which
moves x_t to x_{t−δ} along the DDIM direction given a noise estimate e; the methods
differ in the e they give it:

- pseudo Runge-Kutta (PRK, formula 13), the warm-up: four UNet calls per step,
  e1 at (x_t, t), e2 and e3 at t − δ/2, e4 at t − δ, e′ = (e1 + 2e2 + 2e3 + e4) / 6;
- pseudo linear multistep (PLMS, formula 12), after three PRK steps:
  e′ = (55 e_t − 59 e_{t−δ} + 37 e_{t−2δ} − 9 e_{t−3δ}) / 24, one UNet call per step.
  With ``skip_prk_steps`` the first steps use lower orders instead (1: e_t, then a
  second call at the first step's end that averages the two, as Heun's method; then
  (3e_t − e_{t−δ})/2 and (23e_t − 16e_{t−δ} + 5e_{t−2δ})/12, Adams-Bashforth 2 and 3).

Notation (variable -> paper):

=======================  =================================================
``alpha_prod_t``         ᾱ_t
``alpha_prod_t_prev``    ᾱ_{t−δ}
``model_output``, ``e``  ε_θ(x_t, t), the UNet's noise estimate
``delta``                δ = T // n, the step between timesteps
``ets``                  e_t, e_{t−δ}, … (the last four, newest last)
``x_t``                  the sample at the start of the current step
=======================  =================================================

Numerics: as in diffusers, float32 op by op in the same order; torch's sqrt (MKL) is
one ulp off for ~17 % of inputs, ours is correctly rounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .base import Sampler, SamplerRun, SchedulerConfig, one_of
from .schedule import alphas_cumprod, make_betas, spaced_timesteps

_F32 = np.float32
PNDM_ORDER = 4  # PRK runs over the last four of the spaced timesteps (three steps of four calls)


@dataclass(frozen=True)
class PNDMConfig(SchedulerConfig):
    """The scheduler_config.json keys ``PNDMScheduler`` reads, with its defaults."""

    LABEL = "pndm (PNDMScheduler)"
    PREDICTION_TYPES = ("epsilon", "v_prediction")

    skip_prk_steps: bool = False
    set_alpha_to_one: bool = False


def pndm_transfer(sample: np.ndarray, model_output: np.ndarray, alpha_prod_t: np.float32,
                  alpha_prod_t_prev: np.float32, prediction_type: str = "epsilon") -> np.ndarray:
    """φ(x_t, e, t, t−δ), formula (9): x_{t−δ} = sqrt(ᾱ_{t−δ}/ᾱ_t) x_t − (ᾱ_{t−δ} − ᾱ_t) e /
    (ᾱ_t sqrt(1 − ᾱ_{t−δ}) + sqrt(ᾱ_t (1 − ᾱ_t) ᾱ_{t−δ})). A pure function of its arguments."""
    one_of("prediction_type", prediction_type, PNDMConfig.PREDICTION_TYPES)
    a, a_prev = _F32(alpha_prod_t), _F32(alpha_prod_t_prev)
    sample = np.asarray(sample, np.float32)
    model_output = np.asarray(model_output, np.float32)
    beta_prod_t = _F32(1.0) - a
    beta_prod_t_prev = _F32(1.0) - a_prev
    # 1. v-prediction: e = sqrt(ᾱ_t) v + sqrt(1 − ᾱ_t) x_t
    if prediction_type == "v_prediction":
        model_output = np.sqrt(a) * model_output + np.sqrt(beta_prod_t) * sample
    # 2. formula (9)
    sample_coeff = np.sqrt(a_prev / a)
    model_output_denom_coeff = a * np.sqrt(beta_prod_t_prev) + np.sqrt(a * beta_prod_t * a_prev)
    return sample_coeff * sample - (a_prev - a) * model_output / model_output_denom_coeff


class PNDMSampler(Sampler):
    """The numpy counterpart of diffusers' ``PNDMScheduler``."""

    name = "pndm"
    diffusers_class = "PNDMScheduler"
    config_class = PNDMConfig

    def __init__(self, config: PNDMConfig):
        super().__init__(config)
        self.alphas_cumprod = alphas_cumprod(make_betas(config))
        # The last step has no ᾱ_{t−δ}: 1 (x_0 exactly) or ᾱ at t = 0.
        self.final_alpha_cumprod = _F32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]

    def _start(self, num_inference_steps: int, eta: float) -> "PNDMRun":
        if not self.config.skip_prk_steps and num_inference_steps < PNDM_ORDER:
            raise UserError(f"pndm's Runge-Kutta warm-up needs at least {PNDM_ORDER} steps; got "
                            f"{num_inference_steps}; expected >= {PNDM_ORDER} (diffusers fails too); "
                            "try more steps or skip_prk_steps=true")
        return PNDMRun(self, num_inference_steps)

    def schedule(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(PRK timesteps, PLMS timesteps), int64, as diffusers' ``set_timesteps``."""
        cfg, n = self.config, num_inference_steps
        # 1. the spaced timesteps, ascending
        ascending = spaced_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.steps_offset)
        ascending = ascending.round()[::-1].astype(np.int64)
        if cfg.skip_prk_steps:
            # 2a. PLMS only: the second timestep twice (the first step's second evaluation)
            plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
            return np.zeros(0, np.int64), plms.astype(np.int64)
        # 2b. PRK over the last four: t, t − δ/2, t − δ/2, t − δ per step; then PLMS from there on
        half_delta = cfg.num_train_timesteps // n // 2
        prk = ascending[-PNDM_ORDER:].repeat(2) + np.tile(np.array([0, half_delta]), PNDM_ORDER)
        prk = prk[:-1].repeat(2)[1:-1][::-1]
        return prk.astype(np.int64), ascending[:-3][::-1].astype(np.int64)


class PNDMRun(SamplerRun):
    """One PNDM run: the PRK accumulator and the e_t history live here."""

    def __init__(self, sampler: PNDMSampler, num_inference_steps: int):
        self.sampler = sampler
        self.delta = sampler.config.num_train_timesteps // num_inference_steps  # δ
        prk, plms = sampler.schedule(num_inference_steps)
        self.num_prk = len(prk)
        self.timesteps = np.concatenate([prk, plms]).astype(np.int64)
        self.ets: list[np.ndarray] = []
        self.rk_sum: np.ndarray | None = None   # e1/6 + e2/3 + e3/3 within a PRK step
        self.x_t: np.ndarray | None = None

    def _transfer(self, sample: np.ndarray, t: int, prev_t: int, e: np.ndarray) -> np.ndarray:
        s = self.sampler
        alpha_prod_t_prev = s.alphas_cumprod[prev_t] if prev_t >= 0 else s.final_alpha_cumprod
        return pndm_transfer(sample, e, s.alphas_cumprod[t], alpha_prod_t_prev, s.config.prediction_type)

    def _step(self, model_output: np.ndarray, i: int, sample: np.ndarray, generator) -> np.ndarray:
        t = int(self.timesteps[i])
        if i < self.num_prk:
            return self._prk_step(model_output, i, t, sample)
        return self._plms_step(model_output, i, t, sample)

    def _prk_step(self, e: np.ndarray, i: int, t: int, sample: np.ndarray) -> np.ndarray:
        """Formula (13), one of the four calls of a step from x_t (which it always starts from)."""
        prev_t = t - (0 if i % 2 else self.delta // 2)       # to t − δ/2, t − δ/2, t − δ, t − δ
        t_start = int(self.timesteps[i // 4 * 4])
        k = i % 4
        if k == 0:    # e1 = ε(x_t, t): x1 = φ(x_t, e1, t, t − δ/2)
            self.rk_sum = _F32(1 / 6) * e
            self.ets.append(e)
            self.x_t = sample
        elif k < 3:   # e2 = ε(x1, t − δ/2), e3 = ε(x2, t − δ/2): x2, x3 = φ(x_t, e2|e3, t, t − δ/2 | t − δ)
            self.rk_sum = self.rk_sum + _F32(1 / 3) * e
        else:         # e4 = ε(x3, t − δ): e′ = (e1 + 2e2 + 2e3 + e4) / 6
            e = self.rk_sum + _F32(1 / 6) * e
            self.rk_sum = None
        return self._transfer(self.x_t, t_start, prev_t, e)

    def _plms_step(self, e: np.ndarray, i: int, t: int, sample: np.ndarray) -> np.ndarray:
        """Formula (12), with the lower-order starts of ``skip_prk_steps``."""
        prev_t = t - self.delta
        if i != 1:
            self.ets = self.ets[-3:] + [e]
        else:  # skip_prk_steps' second call: the first step again, from its start
            prev_t, t = t, t + self.delta
        ets = self.ets
        if len(ets) == 1 and i == 0:
            e_prime = e
            self.x_t = sample
        elif len(ets) == 1 and i == 1:
            e_prime = (e + ets[-1]) / _F32(2)
            sample, self.x_t = self.x_t, None
        elif len(ets) == 2:
            e_prime = (_F32(3) * ets[-1] - ets[-2]) / _F32(2)
        elif len(ets) == 3:
            e_prime = (_F32(23) * ets[-1] - _F32(16) * ets[-2] + _F32(5) * ets[-3]) / _F32(12)
        else:
            e_prime = _F32(1 / 24) * (_F32(55) * ets[-1] - _F32(59) * ets[-2] + _F32(37) * ets[-3]
                                      - _F32(9) * ets[-4])
        return self._transfer(sample, t, prev_t, e_prime)
