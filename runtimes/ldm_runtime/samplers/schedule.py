"""The noise schedule that every sampler shares, computed as diffusers computes it.

A discrete diffusion model is trained on T noise levels. Everything a sampler needs
about them follows from the betas:

====================  ======================================  =================================
variable              paper notation                          diffusers computes it in
====================  ======================================  =================================
``betas``             β_1 … β_T (DDPM, Ho et al. 2020)         torch float32
``alphas_cumprod``    ᾱ_t = Π_{s≤t} (1 − β_s)                  torch float32 (cumprod in float64)
``sigmas``            σ_t = sqrt((1 − ᾱ_t) / ᾱ_t)  (EDM's σ)    torch float32
``log_sigmas``        log σ_t                                  numpy, float32
spaced timesteps      the n of T levels a sampler visits       numpy, float64
``karras_sigmas``     Karras et al. 2022, eq. (5), ρ = 7       numpy, float64
``sigma_to_t``        σ → t, linear in log σ                   numpy, float64
====================  ======================================  =================================

Numerics (torch 2.13 on x86-64). Where diffusers uses numpy we use the same numpy
expression, so the result is identical. Where it uses torch float32 we compute in
float32 operation by operation; IEEE ``+ - * /`` then agree bit for bit, but torch's
CPU ``sqrt``, ``log`` and ``exp`` (MKL's vector functions) are not correctly rounded
(measured: up to 0.75, 0.87 and 0.55 ulp from exact), while ours are (``np.sqrt``,
or float64 then one rounding). So a σ computed through a torch sqrt can be one ulp
away from diffusers' (about 17 % of them), and that is the only difference:

- ``torch.linspace`` (float32) is ``start + step*i`` for the first half and
  ``end - step*(steps-1-i)`` for the second, as fused multiply-adds:
  :func:`torch_linspace_float32` reproduces it bit for bit.
- ``torch.cumprod`` on CPU accumulates float32 in float64: :func:`cumprod_float32`.
- ``torch.tensor(list_of_floats, dtype=float32)`` rounds each float64 once.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from ..fma import fma_float32

_F32 = np.float32

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


# --- float32 as torch computes it ----------------------------------------------------


def torch_linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` as computed on CPU."""
    start32, end32 = _F32(start), _F32(end)
    if steps == 1:
        return np.array([start32], np.float32)
    step = (end32 - start32) / _F32(steps - 1)
    i = np.arange(steps)
    halfway = steps // 2
    first = fma_float32(step, i[:halfway].astype(np.float32), start32)
    second = fma_float32(-step, (steps - 1 - i[halfway:]).astype(np.float32), end32)
    return np.concatenate([first, second])


def cumprod_float32(x: np.ndarray) -> np.ndarray:
    """``torch.cumprod`` of float32 on CPU: accumulated in float64, each output rounded."""
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def log32(x) -> np.float32:
    """A torch float32 ``log``, correctly rounded (torch's own is within 0.87 ulp of exact)."""
    with np.errstate(divide="ignore"):  # log(0) = -inf, as torch
        return np.log(np.asarray(x, np.float64)).astype(np.float32)


def exp32(x) -> np.float32:
    """A torch float32 ``exp``, correctly rounded (torch's own is within 0.55 ulp of exact)."""
    return np.exp(np.asarray(x, np.float64)).astype(np.float32)


# --- betas and ᾱ ---------------------------------------------------------------------


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The "squaredcos_cap_v2" (Glide cosine) schedule: betas from ᾱ(t) = cos²((t+s)/(1+s) · π/2)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, np.float64).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1."""
    alphas = _F32(1.0) - betas
    alphas_bar_sqrt = np.sqrt(cumprod_float32(alphas))

    # Shift so the last timestep is zero, then scale so the first is back to its old value.
    alphas_bar_sqrt_0 = alphas_bar_sqrt[0].copy()
    alphas_bar_sqrt_T = alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = alphas_bar_sqrt - alphas_bar_sqrt_T
    alphas_bar_sqrt = alphas_bar_sqrt * (alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T))

    # Back to betas: undo the sqrt, then the cumprod.
    alphas_bar = alphas_bar_sqrt * alphas_bar_sqrt
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (_F32(1.0) - alphas).astype(np.float32)


def make_betas(config) -> np.ndarray:
    """β_1..β_T in float32 from a config's ``num_train_timesteps``, ``beta_*`` and ``trained_betas``."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.array(config.trained_betas, np.float64).astype(np.float32)
    elif config.beta_schedule == "linear":
        betas = torch_linspace_float32(config.beta_start, config.beta_end, n)
    elif config.beta_schedule == "scaled_linear":
        # Specific to the latent diffusion models: linear in sqrt(β).
        sqrt_betas = torch_linspace_float32(config.beta_start**0.5, config.beta_end**0.5, n)
        betas = sqrt_betas * sqrt_betas
    else:  # squaredcos_cap_v2, checked by the config
        betas = betas_for_alpha_bar(n)
    if getattr(config, "rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)
    return betas


def alphas_cumprod(betas: np.ndarray, *, zero_snr_floor: bool = False) -> np.ndarray:
    """ᾱ_t = Π (1 − β_s), float32. ``zero_snr_floor``: ᾱ_T = 2⁻²⁴ instead of 0, so σ_T is finite
    (what the σ-based schedulers do after ``rescale_betas_zero_snr``)."""
    out = cumprod_float32((_F32(1.0) - betas).astype(np.float32))
    if zero_snr_floor:
        out[-1] = _F32(2.0**-24)
    return out


# --- which timesteps to visit -----------------------------------------------------------


def spaced_timesteps(spacing: str, num_inference_steps: int, num_train_timesteps: int,
                     steps_offset: int = 0) -> np.ndarray:
    """The n timesteps a sampler visits, descending, float64 (diffusers' ``set_timesteps``).

    Table 2 of Lin et al. 2023: "leading" = 0, r, 2r, … with r = T // n (+ steps_offset,
    the original DDIM/CompVis choice); "trailing" ends at T − 1; "linspace" spans 0 … T − 1
    (not rounded here: DDIM and PNDM round it, the Euler samplers keep the fractions).
    Only "leading" applies ``steps_offset``, as in diffusers.
    """
    n, T = num_inference_steps, num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n)[::-1].copy()
    if spacing == "leading":
        if (n - 1) * (T // n) + steps_offset > T - 1:  # diffusers would index ᾱ past its end mid-run
            raise UserError(f"{n} steps are too many for this scheduler: its leading spacing with steps_offset "
                            f"{steps_offset} would reach timestep {(n - 1) * (T // n) + steps_offset} of {T}; use "
                            f"at most {max_leading_steps(T, steps_offset)} steps")
        step_ratio = T // n
        return (np.arange(0, n) * step_ratio).round()[::-1].astype(np.float64) + steps_offset
    step_ratio = T / n  # "trailing"
    return np.round(np.arange(T, 0, -step_ratio)) - 1


def max_leading_steps(num_train_timesteps: int, steps_offset: int) -> int:
    """The most inference steps "leading" spacing can take with this offset (diffusers fails beyond it)."""
    T = num_train_timesteps
    return max((k for k in range(1, T + 1) if (k - 1) * (T // k) + steps_offset <= T - 1), default=0)


# --- σ's ---------------------------------------------------------------------------------


def sigmas_from_alphas_cumprod(alphas_cumprod: np.ndarray) -> np.ndarray:
    """σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), float32 (torch in diffusers: one ulp apart where its sqrt is)."""
    ac = np.asarray(alphas_cumprod, np.float32)
    return np.sqrt((_F32(1.0) - ac) / ac)


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. (5): σ_i = (σ_max^(1/ρ) + i/(n−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, float64."""
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """The (fractional) training timestep of ``sigma``: linear interpolation of t in log σ."""
    # 1. bracket log σ between two training levels
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    # 2. interpolate between them
    w = (low - log_sigma) / (low - high)
    w = np.clip(w, 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(np.shape(sigma))


def final_sigma(kind: str, alphas_cumprod: np.ndarray) -> np.float32:
    """The σ after the last step: 0 ("zero", a clean sample) or σ at t = 0 ("sigma_min")."""
    if kind == "zero":
        return _F32(0.0)
    return sigmas_from_alphas_cumprod(alphas_cumprod[:1])[0]
