"""DPM-Solver++ multistep sampling in numpy: Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast
Solver for Guided Sampling of Diffusion Probabilistic Models" (2022). https://arxiv.org/abs/2211.01095

A port of diffusers' ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``
(the "DPM++ 2M" of the web UIs; "DPM++ 2M Karras" with ``use_karras_sigmas``). The
sampler integrates the diffusion ODE in λ = log(α/σ), the half log-SNR, with the
data prediction x_θ: one UNet call per step, and the previous calls' x_θ as history.

Notation (variable -> paper):

=========================  ==============================================================
``sigma`` (schedule)       σ of the EDM parameterisation, sqrt((1 − ᾱ)/ᾱ)
``alpha_t``, ``sigma_t``   α_t = 1/sqrt(σ² + 1), σ_t = σ α_t (so α_t² + σ_t² = 1)
``lambda_t``               λ_t = log α_t − log σ_t
``h``                      h_i = λ_{t_i} − λ_{t_{i−1}}
``x0_pred``, ``m0, m1``    x_θ(x_t, t): now, one step ago, …
``r0``, ``D0``, ``D1``     r_i = h_{i−1}/h_i, D0 = m0, D1 = (m0 − m1)/r0
=========================  ==============================================================

Updates (the paper's eq. (5) and Algorithm 2, as diffusers writes them):

- first order (DDIM in λ):  x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D0
- 2M, midpoint:  x_t = (σ_t/σ_s0) x_s − α_t (e^{−h} − 1) D0 − ½ α_t (e^{−h} − 1) D1
- 2M, heun:      x_t = (σ_t/σ_s0) x_s − α_t (e^{−h} − 1) D0 + α_t ((e^{−h} − 1)/h + 1) D1
- 3M:            adds the second difference D2 (DPM-Solver's third-order multistep).

The solver starts at first order, raises the order as the history fills, and lowers
it again at the end for short runs (``lower_order_final``, fewer than 15 steps) or
for the step to σ = 0 (``final_sigmas_type="zero"``), as diffusers does.

Numerics: the schedule as in :mod:`.schedule`; each step's scalars in float32 as
torch computes them (whose log/exp/sqrt are ≤ 1 ulp from ours); arrays op by op in
diffusers' order. The subtraction h = λ_t − λ_s loses digits when the steps are
small, in both: that is the dominant difference, bounded in the tests.

Two configurations diffusers cannot run (diffusers 0.42):

- Karras σ's on the cosine schedule repeat the first timestep (998, 998, …): diffusers'
  ``index_for_timestep`` then starts at the *second* σ and the run ends in an IndexError.
  Here call i always uses σ_i, which is what diffusers does after ``set_begin_index(0)``.
- Karras σ's with ``final_sigmas_type="sigma_min"`` make the last step go from σ_min to
  σ_min (h = 0); a heun or third-order last step divides by h and diffusers returns NaN.
  Here ``start`` refuses that configuration with a UserError.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .base import Sampler, SamplerRun, SchedulerConfig
from .schedule import (alphas_cumprod, exp32, final_sigma, karras_sigmas, log32, make_betas,
                       sigma_to_t, sigmas_from_alphas_cumprod)
from .thresholding import check_thresholding_ratio, threshold_sample

_F32 = np.float32
_NOT_IMPLEMENTED = ("not implemented here (supported: solver_order 1-3, solver_type midpoint/heun, use_karras_sigmas, "
                    "final_sigmas_type zero/sigma_min); try the scheduler's default")


@dataclass(frozen=True)
class DPMSolverConfig(SchedulerConfig):
    """The scheduler_config.json keys ``DPMSolverMultistepScheduler`` reads, with its defaults."""

    LABEL = "dpmpp-2m (DPMSolverMultistepScheduler)"

    timestep_spacing: str = "linspace"
    solver_order: int = 2
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool = False
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -float("inf")
    rescale_betas_zero_snr: bool = False
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    # diffusers' Karras σ's use sigma_min/sigma_max when the config has them, even as keys of another
    # scheduler's config (e.g. an Euler one's): from_config keeps them as hidden attributes.
    sigma_min: float | None = None
    sigma_max: float | None = None
    # options that are not implemented here (refused unless at their default)
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_lu_lambdas: bool = False
    use_flow_sigmas: bool = False
    use_dynamic_shifting: bool = False
    variance_type: str | None = None

    def check(self) -> None:
        # diffusers maps the configs of DEIS and UniPC onto DPM-Solver++ this way
        if self.algorithm_type == "deis":
            object.__setattr__(self, "algorithm_type", "dpmsolver++")
        if self.solver_type in ("logrho", "bh1", "bh2"):
            object.__setattr__(self, "solver_type", "midpoint")
        self.one_of("algorithm_type", ("dpmsolver++",), "the SDE variants and the deprecated 'dpmsolver' are "
                    "not implemented; try algorithm_type 'dpmsolver++' or --sampler euler-a for a stochastic one")
        self.one_of("solver_type", ("midpoint", "heun"))
        self.one_of("solver_order", (1, 2, 3))
        self.one_of("final_sigmas_type", ("zero", "sigma_min"))
        for key in ("use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas",
                    "use_dynamic_shifting"):
            self.refuse_unless(key, False, _NOT_IMPLEMENTED)
        self.refuse_unless("variance_type", None, _NOT_IMPLEMENTED)
        check_thresholding_ratio(self.dynamic_thresholding_ratio)


# --- the steps, pure functions of arrays -------------------------------------------------


def alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
    """EDM σ -> (α_t, σ_t) of the variance-preserving process."""
    alpha_t = _F32(1.0) / np.sqrt(sigma * sigma + _F32(1.0))
    return alpha_t, sigma * alpha_t


def half_log_snr(sigma: np.float32) -> np.float32:
    """λ = log α_t − log σ_t (+inf at σ = 0)."""
    alpha_t, sigma_t = alpha_sigma(sigma)
    return log32(alpha_t) - log32(sigma_t)


def first_order_update(sample, m0, sigma_s, sigma_t) -> np.ndarray:
    """x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x_θ: DDIM, written in λ."""
    alpha_t, sig_t = alpha_sigma(sigma_t)
    _, sig_s = alpha_sigma(sigma_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = half_log_snr(sigma_t) - half_log_snr(sigma_s)
        return (sig_t / sig_s) * sample - (alpha_t * (exp32(-h) - _F32(1.0))) * m0


def second_order_update(sample, m0, m1, sigma_t, sigma_s0, sigma_s1, solver_type: str) -> np.ndarray:
    """DPM-Solver++(2M): the first-order step plus a correction from the last two x_θ."""
    alpha_t, sig_t = alpha_sigma(sigma_t)
    _, sig_s0 = alpha_sigma(sigma_s0)
    lambda_t, lambda_s0, lambda_s1 = (half_log_snr(s) for s in (sigma_t, sigma_s0, sigma_s1))
    # 1. step sizes in λ and their ratio
    h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
    r0 = h_0 / h
    # 2. D0 = x_θ now, D1 = its backward difference scaled to this step
    D0, D1 = m0, (_F32(1.0) / r0) * (m0 - m1)
    phi_1 = alpha_t * (exp32(-h) - _F32(1.0))
    if solver_type == "midpoint":
        return (sig_t / sig_s0) * sample - phi_1 * D0 - (_F32(0.5) * phi_1) * D1
    return (sig_t / sig_s0) * sample - phi_1 * D0 + (alpha_t * ((exp32(-h) - _F32(1.0)) / h + _F32(1.0))) * D1


def third_order_update(sample, m0, m1, m2, sigma_t, sigma_s0, sigma_s1, sigma_s2) -> np.ndarray:
    """DPM-Solver++(3M): adds the second difference D2 of the last three x_θ."""
    alpha_t, sig_t = alpha_sigma(sigma_t)
    _, sig_s0 = alpha_sigma(sigma_s0)
    lambda_t, lambda_s0, lambda_s1, lambda_s2 = (half_log_snr(s) for s in (sigma_t, sigma_s0, sigma_s1, sigma_s2))
    h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
    r0, r1 = h_0 / h, h_1 / h
    D0 = m0
    D1_0, D1_1 = (_F32(1.0) / r0) * (m0 - m1), (_F32(1.0) / r1) * (m1 - m2)
    D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
    D2 = (_F32(1.0) / (r0 + r1)) * (D1_0 - D1_1)
    e = exp32(-h) - _F32(1.0)
    return ((sig_t / sig_s0) * sample - (alpha_t * e) * D0 + (alpha_t * (e / h + _F32(1.0))) * D1
            - (alpha_t * ((exp32(-h) - _F32(1.0) + h) / (h * h) - _F32(0.5))) * D2)


# --- the sampler ---------------------------------------------------------------------------


class DPMSolverSampler(Sampler):
    """The numpy counterpart of diffusers' ``DPMSolverMultistepScheduler`` (dpmsolver++)."""

    name = "dpmpp-2m"
    diffusers_class = "DPMSolverMultistepScheduler"
    config_class = DPMSolverConfig

    def __init__(self, config: DPMSolverConfig):
        super().__init__(config)
        self.alphas_cumprod = alphas_cumprod(make_betas(config), zero_snr_floor=config.rescale_betas_zero_snr)
        self.train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        # λ_t over the training timesteps (torch float32 in diffusers), for lambda_min_clipped
        self.lambda_t = log32(np.sqrt(self.alphas_cumprod)) - log32(np.sqrt(_F32(1.0) - self.alphas_cumprod))

    def _start(self, num_inference_steps: int, eta: float) -> "DPMSolverRun":
        timesteps, sigmas = self.schedule(num_inference_steps)
        run = DPMSolverRun(self.config, timesteps, sigmas)
        n, cfg = len(timesteps), self.config
        last_order = run.order(n - 1)
        if sigmas[n] == sigmas[n - 1] and (last_order == 3 or (last_order == 2 and cfg.solver_type == "heun")):
            raise UserError(
                f"dpmpp-2m's last step would go from σ_min to σ_min (use_karras_sigmas with final_sigmas_type "
                f"'sigma_min'), where its order-{last_order} {cfg.solver_type} update divides by h = 0; got NaN "
                "(as diffusers does); expected a last step of order 1; try euler_at_final=true, "
                "final_sigmas_type 'zero' or solver_type 'midpoint' with solver_order 2")
        return run

    def spaced_timesteps(self, n: int) -> np.ndarray:
        """n of n + 1 spaced timesteps (the last, t = 0, dropped), stopping where λ < lambda_min_clipped."""
        cfg, T = self.config, self.config.num_train_timesteps
        clipped_idx = int(np.searchsorted(self.lambda_t[::-1], _F32(cfg.lambda_min_clipped)))
        last_timestep = T - clipped_idx
        if cfg.timestep_spacing == "linspace":
            return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        if cfg.timestep_spacing == "leading":
            step_ratio = last_timestep // (n + 1)
            timesteps = (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64)
            return timesteps + cfg.steps_offset
        step_ratio = T / n  # "trailing"
        return np.arange(last_timestep, 0, -step_ratio).round().copy().astype(np.int64) - 1

    def schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps int64, σ's float32 with one more, the final σ), as diffusers' ``set_timesteps``."""
        cfg = self.config
        timesteps = self.spaced_timesteps(n)
        log_sigmas = np.log(self.train_sigmas)
        if cfg.use_karras_sigmas:
            # 1a. Karras σ's between the schedule's extremes; timesteps from σ
            flipped = np.flip(self.train_sigmas).copy()
            sigma_min = cfg.sigma_min if cfg.sigma_min is not None else flipped[-1].item()
            sigma_max = cfg.sigma_max if cfg.sigma_max is not None else flipped[0].item()
            sigmas = karras_sigmas(sigma_min, sigma_max, n)
            timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
            if cfg.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            # 1b. σ at each timestep
            sigmas = np.interp(timesteps, np.arange(0, len(self.train_sigmas)), self.train_sigmas)
        # 2. the σ after the last step
        sigmas = np.concatenate([sigmas, [final_sigma(cfg.final_sigmas_type, self.alphas_cumprod)]])
        return timesteps.astype(np.int64), sigmas.astype(np.float32)


class DPMSolverRun(SamplerRun):
    """One DPM-Solver++ run: σ's, and the last ``solver_order`` x_θ's."""

    def __init__(self, config: DPMSolverConfig, timesteps: np.ndarray, sigmas: np.ndarray):
        self.config, self.timesteps, self.sigmas = config, timesteps, sigmas
        self.model_outputs: list[np.ndarray | None] = [None] * config.solver_order

    def data_prediction(self, model_output: np.ndarray, i: int, sample: np.ndarray) -> np.ndarray:
        """x_θ(x_t, t) from the UNet's output (diffusers' ``convert_model_output``), thresholded if asked."""
        cfg = self.config
        alpha_t, sigma_t = alpha_sigma(self.sigmas[i])
        if cfg.prediction_type == "epsilon":
            x0_pred = (sample - sigma_t * model_output) / alpha_t
        elif cfg.prediction_type == "sample":
            x0_pred = model_output
        else:  # "v_prediction": v = α_t ε − σ_t x_0
            x0_pred = alpha_t * sample - sigma_t * model_output
        if cfg.thresholding:
            x0_pred = threshold_sample(x0_pred, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        return x0_pred

    def order(self, i: int) -> int:
        """The order of step i: 1 until the history has x_θ's, lowered at the end as diffusers does."""
        cfg, n = self.config, len(self.timesteps)
        lower_order_nums = min(i, cfg.solver_order)  # x_θ's already in the history
        lower_order_final = i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15)
                                            or cfg.final_sigmas_type == "zero")
        lower_order_second = i == n - 2 and cfg.lower_order_final and n < 15
        if cfg.solver_order == 1 or lower_order_nums < 1 or lower_order_final:
            return 1
        if cfg.solver_order == 2 or lower_order_nums < 2 or lower_order_second:
            return 2
        return 3

    def _step(self, model_output: np.ndarray, i: int, sample: np.ndarray, generator) -> np.ndarray:
        order = self.order(i)
        # 1. x_θ now, into the history
        self.model_outputs = self.model_outputs[1:] + [self.data_prediction(model_output, i, sample)]
        m, s = self.model_outputs, self.sigmas
        # 2. the multistep update from σ_i to σ_{i+1} (dpmsolver++ draws no noise)
        if order == 1:
            out = first_order_update(sample, m[-1], s[i], s[i + 1])
        elif order == 2:
            out = second_order_update(sample, m[-1], m[-2], s[i + 1], s[i], s[i - 1], self.config.solver_type)
        else:
            out = third_order_update(sample, m[-1], m[-2], m[-3], s[i + 1], s[i], s[i - 1], s[i - 2])
        return out
