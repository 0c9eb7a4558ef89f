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
operation in the same order. Where torch's float32 differs from the obvious numpy
expression we follow torch (measured against torch 2.13 on x86-64):

- ``torch.linspace`` (float32, CPU) is ``start + step*i`` for the first half and
  ``end - step*(steps-1-i)`` for the second, compiled to fused multiply-adds:
  :func:`_torch_linspace_float32` reproduces it bit for bit (``np.linspace`` in
  float64 then rounded differs in ~30 % of the betas by one ulp).
- ``torch.cumprod`` on CPU accumulates float32 in float64: we do the same
  (a float32 ``np.cumprod`` drifts from it in most of the 1000 entries).
- torch's CPU float32 ``sqrt`` (MKL's vectorised one) is off by one ulp in ~20 % of
  inputs, ``np.sqrt`` is correctly rounded; that is left as is, and it is why the
  steps agree to ~1e-7 relative rather than bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .errors import UserError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

_F32 = np.float32


def _one_of(what: str, got: Any, expected: tuple[str, ...]) -> None:
    if got not in expected:
        raise UserError(f"unsupported {what}; got {got!r}; expected one of {', '.join(map(repr, expected))}")


@dataclass(frozen=True)
class DDIMConfig:
    """The scheduler_config.json keys a DDIM sampler reads (diffusers' names and defaults)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    def __post_init__(self) -> None:
        if self.trained_betas is not None:
            # A tuple keeps the frozen config hashable; the json gives a list.
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in self.trained_betas))
            if len(self.trained_betas) != self.num_train_timesteps:
                raise UserError(f"trained_betas has the wrong length; got {len(self.trained_betas)}; "
                                f"expected num_train_timesteps = {self.num_train_timesteps}")
        else:
            _one_of("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _one_of("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        _one_of("prediction_type", self.prediction_type, PREDICTION_TYPES)
        if not (isinstance(self.num_train_timesteps, int) and self.num_train_timesteps >= 1):
            raise UserError(f"bad num_train_timesteps; got {self.num_train_timesteps!r}; expected an integer >= 1")
        if not (0.0 < self.dynamic_thresholding_ratio <= 1.0):
            raise UserError(f"bad dynamic_thresholding_ratio; got {self.dynamic_thresholding_ratio!r}; "
                            "expected a value in (0, 1]")

    @classmethod
    def from_scheduler_config(cls, cfg: dict) -> "DDIMConfig":
        """Build from a diffusers scheduler_config.json dict; keys DDIM does not read are ignored.

        Like diffusers' ``DDIMScheduler.from_config``, this also accepts the config of
        another scheduler (Stable Diffusion ships a PNDM one): missing keys take
        DDIM's defaults.
        """
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known})


@dataclass(frozen=True)
class DDIMStepOutput:
    prev_sample: np.ndarray           # x_{t-1}, the next input to the model
    pred_original_sample: np.ndarray  # predicted x_0 (after clipping / thresholding)


# --- the noise schedule -------------------------------------------------------------


def _fma_float32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a*b + c`` rounded once to float32, as a fused multiply-add, for float32 ``a, b, c``.

    The float64 product of two float32 values is exact; the float64 sum is rounded to
    odd (via the TwoSum error term) so that the final rounding to float32 is correct.
    """
    p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    c64 = np.asarray(c, np.float64)
    s = np.asarray(p + c64, np.float64)
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)  # exact p + c == s + err
    odd = (s.view(np.int64) & 1) == 1
    s = np.where((err != 0) & ~odd, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def _torch_linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` as computed on CPU."""
    start32, end32 = _F32(start), _F32(end)
    if steps == 1:
        return np.array([start32], np.float32)
    step = (end32 - start32) / _F32(steps - 1)
    i = np.arange(steps)
    halfway = steps // 2
    first = _fma_float32(step, i[:halfway].astype(np.float32), start32)
    second = _fma_float32(-step, (steps - 1 - i[halfway:]).astype(np.float32), end32)
    return np.concatenate([first, second])


def _betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The "squaredcos_cap_v2" (Glide cosine) schedule: betas from ᾱ(t) = cos²((t+s)/(1+s) · π/2)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, np.float64).astype(np.float32)


def _cumprod_float32(x: np.ndarray) -> np.ndarray:
    # torch's CPU cumprod accumulates float32 in float64 and rounds each output.
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1."""
    alphas = _F32(1.0) - betas
    alphas_bar_sqrt = np.sqrt(_cumprod_float32(alphas))

    # Shift so the last timestep is zero, then scale so the first is back to its old value.
    alphas_bar_sqrt_0 = alphas_bar_sqrt[0].copy()
    alphas_bar_sqrt_T = alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = alphas_bar_sqrt - alphas_bar_sqrt_T
    alphas_bar_sqrt = alphas_bar_sqrt * (alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T))

    # Back to betas: undo the sqrt, then the cumprod.
    alphas_bar = alphas_bar_sqrt * alphas_bar_sqrt
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (_F32(1.0) - alphas).astype(np.float32)


def make_betas(config: DDIMConfig) -> np.ndarray:
    """β_1..β_T in float32, as diffusers builds them."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.array(config.trained_betas, np.float64).astype(np.float32)
    elif config.beta_schedule == "linear":
        betas = _torch_linspace_float32(config.beta_start, config.beta_end, n)
    elif config.beta_schedule == "scaled_linear":
        # Specific to the latent diffusion models: linear in sqrt(β).
        sqrt_betas = _torch_linspace_float32(config.beta_start**0.5, config.beta_end**0.5, n)
        betas = sqrt_betas * sqrt_betas
    else:  # squaredcos_cap_v2, checked by DDIMConfig
        betas = _betas_for_alpha_bar(n)
    if config.rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return betas


# --- one DDIM step ------------------------------------------------------------------


def _threshold_sample(sample: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding (Imagen, Saharia et al. 2022): clip x_0 to [-s, s] and divide by s.

    s is the ``ratio`` quantile of |x_0| per batch item, clamped to [1, max_value].
    """
    batch = sample.shape[0]
    flat = np.abs(sample.reshape(batch, -1))
    # torch.quantile's "linear" interpolation, in float32 like torch.
    ranks = _F32(ratio) * _F32(flat.shape[1] - 1)
    below = int(np.floor(ranks))
    above = min(below + 1, flat.shape[1] - 1)
    weight = ranks - _F32(below)
    ordered = np.sort(flat, axis=1)
    lo, hi = ordered[:, below], ordered[:, above]
    s = lo + weight * (hi - lo) if weight < 0.5 else hi - (hi - lo) * (_F32(1.0) - weight)
    s = np.clip(s, _F32(1.0), _F32(max_value))[:, None]
    return (np.clip(sample.reshape(batch, -1), -s, s) / s).reshape(sample.shape).astype(np.float32)


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
    _one_of("prediction_type", prediction_type, PREDICTION_TYPES)
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
        pred_original_sample = _threshold_sample(pred_original_sample, *dynamic_threshold)
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


class DDIMSampler:
    """A DDIM noise schedule plus its step; the numpy counterpart of diffusers' ``DDIMScheduler``."""

    # DDIM's x_T ~ N(0, I): the initial latents are not scaled.
    init_noise_sigma = 1.0

    def __init__(self, config: DDIMConfig):
        self.config = config
        self.betas = make_betas(config)
        self.alphas = (_F32(1.0) - self.betas).astype(np.float32)
        self.alphas_cumprod = _cumprod_float32(self.alphas)
        # At every step DDIM looks at the previous α; the final step has none:
        # `set_alpha_to_one` sets it to 1 (x_0 exactly), else it reuses α at t = 0.
        self.final_alpha_cumprod = _F32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]

    def _check_num_inference_steps(self, num_inference_steps: int) -> int:
        n = self.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or not 1 <= num_inference_steps <= n:
            raise UserError(f"bad number of inference steps; got {num_inference_steps!r}; "
                            f"expected an integer in 1..{n} (num_train_timesteps)")
        return int(num_inference_steps)

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The timesteps to visit, descending, int64; identical to diffusers' ``set_timesteps``.

        Spacings (Table 2 of Lin et al. 2023): "leading" = 0, r, 2r, ... (+ steps_offset),
        the original DDIM/CompVis one; "trailing" ends at T-1; "linspace" spans 0..T-1.
        Only "leading" applies ``steps_offset``, as in diffusers.
        """
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        num_train_timesteps = self.config.num_train_timesteps
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            timesteps = np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()[::-1].astype(np.int64)
        elif spacing == "leading":
            step_ratio = num_train_timesteps // num_inference_steps
            timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].astype(np.int64)
            timesteps += self.config.steps_offset
        else:  # "trailing"
            step_ratio = num_train_timesteps / num_inference_steps
            timesteps = np.round(np.arange(num_train_timesteps, 0, -step_ratio)).astype(np.int64)
            timesteps -= 1
        if timesteps.size and int(timesteps.max()) >= num_train_timesteps:
            raise UserError(f"{num_inference_steps} steps are too many for this scheduler: its {spacing} spacing "
                            f"with steps_offset {self.config.steps_offset} would reach timestep "
                            f"{int(timesteps.max())} of {num_train_timesteps}; use at most "
                            f"{self.max_steps()} steps")
        return np.ascontiguousarray(timesteps)

    def max_steps(self) -> int:
        """The most inference steps this schedule can take (diffusers' DDIMScheduler fails beyond it too)."""
        n = self.config.num_train_timesteps
        if self.config.timestep_spacing != "leading":
            return n
        return max(k for k in range(1, n + 1) if (k - 1) * (n // k) + self.config.steps_offset <= n - 1)

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
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
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


def guidance(noise_uncond: np.ndarray, noise_text: np.ndarray, scale: float) -> np.ndarray:
    """Classifier-free guidance (Ho & Salimans 2022): ε_uncond + s · (ε_text − ε_uncond)."""
    noise_uncond = np.asarray(noise_uncond, np.float32)
    noise_text = np.asarray(noise_text, np.float32)
    return (noise_uncond + _F32(scale) * (noise_text - noise_uncond)).astype(np.float32)
