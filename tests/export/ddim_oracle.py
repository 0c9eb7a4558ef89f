"""The DDIM sampler against diffusers' DDIMScheduler: each step on the same inputs, with a derived
per-element tolerance (moved from tests/runtime/test_sampler.py when the samplers became a package).

Each case builds both from one scheduler-config dict, checks the timesteps are
identical, then steps both through a run (all steps of a short one, the first, middle
and last few of a long one) with a fixed random "model output" per step and the same
variance noise, comparing each step's x_{t-1} and predicted x_0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import DDIMScheduler

from ldm_runtime.samplers import DDIMConfig, DDIMSampler

SHAPE = (1, 4, 8, 8)
STEP_COUNTS = (10, 50)

# How the two can differ. Both compute in float32, op for op, from bit-identical
# α's (see test_schedule_matches_diffusers), and elementwise +, -, *, / are IEEE in
# both. The one systematic difference: torch's CPU float32 sqrt (MKL) is not correctly
# rounded -- one ulp off for ~20 % of inputs -- and np.sqrt is. So the scalar
# coefficients sqrt(α_t), sqrt(1-α_t), σ_t, ... differ by up to an ulp, and that
# difference then goes through the rest of the step.
#
# Relative tolerance: 1e-6, i.e. ~16 float32 ulps of the value itself.
RTOL = 1e-6
# Absolute tolerance, per element, from first-order error propagation: TOL = 16 ulps
# (~1e-6) of the *magnitude* of the computation -- the step evaluated in float64 with
# every term replaced by its absolute value (the running error bound
# |fl(f) - f| <= k u |f|_abs). Relative error alone cannot work where terms cancel:
# x_0 = (x_t - sqrt(1-α_t) ε) / sqrt(α_t) near t = T subtracts O(1) terms and then
# multiplies by 1/sqrt(α_t) ~ 150, so a 1-ulp difference in sqrt(1-α_t) becomes ~1e-5
# absolute on an x_0 of ~0.2: an atol of 16 ulps of |x_0|_abs ~ 300 is ~3e-5.
TOL = 16 * float(np.finfo(np.float32).eps) / 2  # 16 units of roundoff, 2**-20 ~ 9.5e-7


def ddim_tolerances(sampler: DDIMSampler, model_output, sample, noise, t: int, n: int, eta: float, x0_out, x0_ref):
    """Per-element atol for (x_0, x_{t-1}) of one step, as explained at TOL."""
    a, a_prev = (float(v) for v in sampler.alpha_prods(t, n))
    sa, sb = math.sqrt(a), math.sqrt(1 - a)
    m, x = np.abs(model_output.astype(np.float64)), np.abs(sample.astype(np.float64))
    kind = sampler.config.prediction_type
    with np.errstate(divide="ignore", invalid="ignore"):  # α_t = 0 (zero terminal SNR)
        if kind == "epsilon":
            mag_x0, mag_eps = (x + sb * m) / sa if sa else np.full_like(x, np.inf), m
        elif kind == "sample":
            mag_x0, mag_eps = m, (x + sa * m) / sb
        else:
            mag_x0, mag_eps = sa * x + sb * m, sa * m + sb * x
    atol_x0 = TOL * mag_x0
    # Where both got the same x_0 (e.g. clipped to the same bound), it carries no
    # difference into x_{t-1}.
    mag_x0 = np.where(x0_out == x0_ref, np.abs(x0_ref.astype(np.float64)), mag_x0)
    var = (1 - a_prev) / (1 - a) * (1 - a / a_prev) if a < 1 else 0.0
    std = eta * math.sqrt(max(var, 0.0))
    # c = sqrt(1 - α_{t-1} - σ²) can be ill-conditioned: an ulp on σ moves its argument
    # by ~TOL (2σ² + arg), and the sqrt turns that into min(d/(2c), sqrt(d)) -- e.g. at
    # the last step with η = 1, where the argument is ~1e-3 of its terms.
    arg = max(1 - a_prev - std * std, 0.0)
    c = math.sqrt(arg)
    d_arg = TOL * (2 * std * std + arg)
    d_c = min(d_arg / (2 * c) if c > 0 else math.inf, math.sqrt(d_arg)) + TOL * c
    atol_prev = TOL * (math.sqrt(a_prev) * mag_x0 + c * mag_eps) + d_c * mag_eps
    if noise is not None:
        atol_prev += TOL * std * np.abs(noise)
    return atol_x0, atol_prev


def assert_close(actual: np.ndarray, desired: np.ndarray, atol: np.ndarray, what: str) -> None:
    """np.testing.assert_allclose(rtol=RTOL, atol=atol) for an array atol (its message cannot print one)."""
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    desired = desired.astype(np.float32)
    with np.errstate(invalid="ignore"):
        slack = np.nan_to_num(atol, posinf=0.0) + RTOL * np.abs(desired) - np.abs(actual - desired)
    ok = (slack >= 0) | (actual == desired) | (np.isnan(actual) & np.isnan(desired))
    if not ok.all():
        i = np.unravel_index(np.argmin(np.where(ok, np.inf, slack)), ok.shape)
        raise AssertionError(f"{what}: {int((~ok).sum())}/{ok.size} elements differ; worst at {i}: "
                             f"{actual[i]!r} vs {desired[i]!r}, atol {atol[i]:.3g}, rtol {RTOL}")


def compared_steps(num_inference_steps: int) -> list[int]:
    # All steps of a short run; of a long one the first few (t near T, where x_0 is
    # most ill-conditioned), one in the middle and the last few (t_prev < 0: the final
    # α). Each step is compared on its own inputs, so skipping the others loses nothing.
    if num_inference_steps <= 10:
        return list(range(num_inference_steps))
    return [0, 1, 2, num_inference_steps // 2, num_inference_steps - 3, num_inference_steps - 2,
            num_inference_steps - 1]


def run_both(cfg: dict, num_inference_steps: int, eta: float, seed: int = 0, share_schedule: bool = False) -> None:
    scheduler = DDIMScheduler(**cfg)
    sampler = DDIMSampler(DDIMConfig.from_scheduler_config(dict(scheduler.config)))
    if share_schedule:
        # Compare the steps alone, on one schedule (see test_ddim_rescale_betas_zero_snr).
        scheduler.alphas_cumprod = torch.from_numpy(sampler.alphas_cumprod.copy())
        scheduler.final_alpha_cumprod = torch.tensor(sampler.final_alpha_cumprod)

    scheduler.set_timesteps(num_inference_steps)
    timesteps = sampler.timesteps(num_inference_steps)
    assert timesteps.dtype == np.int64
    np.testing.assert_array_equal(timesteps, scheduler.timesteps.numpy())

    rng = np.random.default_rng(seed)
    sample = rng.standard_normal(SHAPE).astype(np.float32)
    for i in compared_steps(num_inference_steps):
        t = int(timesteps[i])
        model_output = rng.standard_normal(SHAPE).astype(np.float32)
        noise = rng.standard_normal(SHAPE).astype(np.float32) if eta > 0 else None
        ref = scheduler.step(
            torch.from_numpy(model_output), t, torch.from_numpy(sample), eta=eta,
            variance_noise=None if noise is None else torch.from_numpy(noise),
        )
        out = sampler.step(model_output, t, sample, num_inference_steps, eta=eta, variance_noise=noise)
        where = f"step {i} (t={t})"
        ref_x0, ref_prev = ref.pred_original_sample.numpy(), ref.prev_sample.numpy()
        atol_x0, atol_prev = ddim_tolerances(sampler, model_output, sample, noise, t, num_inference_steps, eta,
                                         out.pred_original_sample, ref_x0)
        assert_close(out.pred_original_sample, ref_x0, atol_x0, f"pred_original_sample, {where}")
        if eta > 0 and sampler.alphas_cumprod[t] == 0 and np.isnan(ref_prev).all():
            # Zero terminal SNR, t = T-1: diffusers' sqrt(1 - α_{t-1} - σ_t²) is of -1 ulp
            # here (on this machine); ours clamps it to 0 (see ddim_step, step 6).
            assert np.isfinite(out.prev_sample).all(), where
        else:
            assert_close(out.prev_sample, ref_prev, atol_prev, f"prev_sample, {where}")
        # Next step: diffusers' x_{t-1}, fed to both, so each step is compared on
        # identical inputs (a fresh sample after an undefined step of zero-SNR "epsilon").
        sample = ref_prev if np.isfinite(ref_prev).all() else rng.standard_normal(SHAPE).astype(np.float32)
