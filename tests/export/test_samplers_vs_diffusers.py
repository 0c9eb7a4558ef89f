"""The numpy DDIM sampler against diffusers' DDIMScheduler, over every supported config.

Each case builds both from one scheduler-config dict, checks the timesteps are
identical, then steps both through a run (all steps of a short one, the first, middle
and last few of a long one) with a fixed random "model output" per step and the same
variance noise, comparing each step's x_{t-1} and predicted x_0.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from ldm_runtime.errors import UserError
from ldm_runtime.sampler import (
    DDIMConfig,
    DDIMSampler,
    _torch_linspace_float32,
    ddim_step,
    guidance,
)

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


def _tolerances(sampler: DDIMSampler, model_output, sample, noise, t: int, n: int, eta: float, x0_out, x0_ref):
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


def _assert_close(actual: np.ndarray, desired: np.ndarray, atol: np.ndarray, what: str) -> None:
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


def _compared_steps(num_inference_steps: int) -> list[int]:
    # All steps of a short run; of a long one the first few (t near T, where x_0 is
    # most ill-conditioned), one in the middle and the last few (t_prev < 0: the final
    # α). Each step is compared on its own inputs, so skipping the others loses nothing.
    if num_inference_steps <= 10:
        return list(range(num_inference_steps))
    return [0, 1, 2, num_inference_steps // 2, num_inference_steps - 3, num_inference_steps - 2,
            num_inference_steps - 1]


def _run_both(cfg: dict, num_inference_steps: int, eta: float, seed: int = 0, share_schedule: bool = False) -> None:
    scheduler = DDIMScheduler(**cfg)
    sampler = DDIMSampler(DDIMConfig.from_scheduler_config(dict(scheduler.config)))
    if share_schedule:
        # Compare the steps alone, on one schedule (see test_rescale_betas_zero_snr).
        scheduler.alphas_cumprod = torch.from_numpy(sampler.alphas_cumprod.copy())
        scheduler.final_alpha_cumprod = torch.tensor(sampler.final_alpha_cumprod)

    scheduler.set_timesteps(num_inference_steps)
    timesteps = sampler.timesteps(num_inference_steps)
    assert timesteps.dtype == np.int64
    np.testing.assert_array_equal(timesteps, scheduler.timesteps.numpy())

    rng = np.random.default_rng(seed)
    sample = rng.standard_normal(SHAPE).astype(np.float32)
    for i in _compared_steps(num_inference_steps):
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
        atol_x0, atol_prev = _tolerances(sampler, model_output, sample, noise, t, num_inference_steps, eta,
                                         out.pred_original_sample, ref_x0)
        _assert_close(out.pred_original_sample, ref_x0, atol_x0, f"pred_original_sample, {where}")
        if eta > 0 and sampler.alphas_cumprod[t] == 0 and np.isnan(ref_prev).all():
            # Zero terminal SNR, t = T-1: diffusers' sqrt(1 - α_{t-1} - σ_t²) is of -1 ulp
            # here (on this machine); ours clamps it to 0 (see ddim_step, step 6).
            assert np.isfinite(out.prev_sample).all(), where
        else:
            _assert_close(out.prev_sample, ref_prev, atol_prev, f"prev_sample, {where}")
        # Next step: diffusers' x_{t-1}, fed to both, so each step is compared on
        # identical inputs (a fresh sample after an undefined step of zero-SNR "epsilon").
        sample = ref_prev if np.isfinite(ref_prev).all() else rng.standard_normal(SHAPE).astype(np.float32)


ALL_CONFIGS = list(itertools.product(
    ("linear", "scaled_linear", "squaredcos_cap_v2"),   # beta_schedule
    ("leading", "trailing", "linspace"),                # timestep_spacing
    ("epsilon", "v_prediction", "sample"),              # prediction_type
    (True, False),                                      # clip_sample
    (True, False),                                      # set_alpha_to_one
    (0, 1),                                             # steps_offset
    (0.0, 0.5, 1.0),                                    # eta
))


@pytest.mark.parametrize(
    "beta_schedule,timestep_spacing,prediction_type,clip_sample,set_alpha_to_one,steps_offset,eta", ALL_CONFIGS)
def test_matches_diffusers(beta_schedule, timestep_spacing, prediction_type, clip_sample, set_alpha_to_one,
                           steps_offset, eta):
    cfg = dict(beta_schedule=beta_schedule, timestep_spacing=timestep_spacing, prediction_type=prediction_type,
               clip_sample=clip_sample, set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset)
    if beta_schedule == "scaled_linear":
        cfg.update(beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's
    for n in STEP_COUNTS:
        _run_both(cfg, n, eta)


@pytest.mark.parametrize("timestep_spacing,prediction_type", list(itertools.product(
    ("leading", "trailing", "linspace"), ("epsilon", "v_prediction", "sample"))))
def test_rescale_betas_zero_snr(timestep_spacing, prediction_type):
    # The rescaled schedule goes through sqrt, where torch is an ulp off (see TOL), so
    # it is not bit-identical: test_rescaled_schedule_matches_diffusers bounds it. Here both
    # run on the sampler's schedule, to test the steps at 1e-6.
    # Zero terminal SNR makes α_T = 0: "epsilon" then divides by zero at t = T-1
    # (x_0 = ±inf, clipped to ±1 or left inf/nan); diffusers does the same, and the
    # comparison treats matching inf/nan as equal.
    cfg = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
               timestep_spacing=timestep_spacing, prediction_type=prediction_type, clip_sample=False,
               set_alpha_to_one=False)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for n in STEP_COUNTS:
            _run_both(cfg, n, eta=0.0, share_schedule=True)
            _run_both(dict(cfg, clip_sample=True), n, eta=1.0, share_schedule=True)


@pytest.mark.parametrize("clip_sample_range,thresholding", [(0.5, False), (2.5, False), (1.0, True)])
def test_clip_range_and_thresholding(clip_sample_range, thresholding):
    # Scale the model output up so x_0 exceeds the range and the clip/threshold bites.
    cfg = dict(clip_sample=True, clip_sample_range=clip_sample_range, thresholding=thresholding,
               dynamic_thresholding_ratio=0.9, sample_max_value=1.5, prediction_type="sample")
    scheduler = DDIMScheduler(**cfg)
    sampler = DDIMSampler(DDIMConfig.from_scheduler_config(cfg))
    scheduler.set_timesteps(10)
    rng = np.random.default_rng(1)
    sample = rng.standard_normal(SHAPE).astype(np.float32)
    for t in sampler.timesteps(10):
        model_output = 2.0 * rng.standard_normal(SHAPE).astype(np.float32)
        ref = scheduler.step(torch.from_numpy(model_output), int(t), torch.from_numpy(sample))
        out = sampler.step(model_output, int(t), sample, 10)
        atol_x0, atol_prev = _tolerances(sampler, model_output, sample, None, int(t), 10, 0.0,
                                         out.pred_original_sample, ref.pred_original_sample.numpy())
        _assert_close(out.pred_original_sample, ref.pred_original_sample.numpy(), atol_x0, f"x_0 at t={t}")
        _assert_close(out.prev_sample, ref.prev_sample.numpy(), atol_prev, f"x_t-1 at t={t}")
        sample = ref.prev_sample.numpy()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_timesteps_every_count(spacing, steps_offset):
    scheduler = DDIMScheduler(timestep_spacing=spacing, steps_offset=steps_offset)
    sampler = DDIMSampler(DDIMConfig(timestep_spacing=spacing, steps_offset=steps_offset))
    for n in range(1, 1001):
        scheduler.set_timesteps(n)
        np.testing.assert_array_equal(sampler.timesteps(n), scheduler.timesteps.numpy(), err_msg=f"n={n}")


@pytest.mark.parametrize("cfg", [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="linear", num_train_timesteps=37, beta_start=0.001, beta_end=0.05),
    dict(trained_betas=list(np.linspace(1e-4, 0.02, 1000))),
    dict(set_alpha_to_one=False),
])
def test_schedule_matches_diffusers(cfg):
    scheduler = DDIMScheduler(**cfg)
    sampler = DDIMSampler(DDIMConfig.from_scheduler_config(cfg))
    # Bit-identical: the same float32 linspace (fused multiply-adds) and the same
    # float64-accumulated cumprod as torch.
    np.testing.assert_array_equal(sampler.betas, scheduler.betas.numpy())
    np.testing.assert_array_equal(sampler.alphas_cumprod, scheduler.alphas_cumprod.numpy())
    assert sampler.alphas_cumprod.dtype == np.float32
    assert sampler.final_alpha_cumprod == scheduler.final_alpha_cumprod.numpy()


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_rescaled_schedule_matches_diffusers(beta_schedule):
    cfg = dict(beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    scheduler = DDIMScheduler(**cfg)
    sampler = DDIMSampler(DDIMConfig.from_scheduler_config(cfg))
    # sqrt(ᾱ) is an ulp apart in ~20 % of entries (torch's sqrt); α_t = ᾱ_t/ᾱ_{t-1}
    # turns that into a few ulps per α_t, and the cumprod over 1000 of them is a random
    # walk: ~sqrt(1000) · 2 ulps ~ 4e-6 relative (measured: up to 44 ulps, 3.8e-6).
    # 2e-5 = ~170 ulps leaves margin; α_T is exactly 0 in both.
    np.testing.assert_allclose(sampler.alphas_cumprod, scheduler.alphas_cumprod.numpy(), rtol=2e-5, atol=0)
    assert sampler.alphas_cumprod[-1] == 0.0 == scheduler.alphas_cumprod[-1].item()


def test_torch_linspace_emulation():
    for start, end, steps in [(1e-4, 0.02, 1000), (0.00085**0.5, 0.012**0.5, 1000), (0.3, -2.0, 999),
                              (1e-4, 0.02, 2), (1e-4, 0.02, 1), (0.0, 1.0, 4097)]:
        expected = torch.linspace(start, end, steps, dtype=torch.float32).numpy()
        np.testing.assert_array_equal(_torch_linspace_float32(start, end, steps), expected)


def test_from_scheduler_config_ignores_unknown_keys():
    # Stable Diffusion 1.x ships a PNDM config; DDIM reads its keys and ignores the rest.
    cfg = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
           "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
           "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
           "clip_sample": False}
    config = DDIMConfig.from_scheduler_config(cfg)
    assert config.beta_schedule == "scaled_linear" and config.steps_offset == 1 and not config.clip_sample
    assert config.prediction_type == "epsilon" and config.timestep_spacing == "leading"
    # The original CompVis DDIM sampler: leading spacing, offset 1.
    np.testing.assert_array_equal(DDIMSampler(config).timesteps(50)[[0, 1, -1]], [981, 961, 1])


@pytest.mark.parametrize("key,value", [
    ("beta_schedule", "cosine"),
    ("timestep_spacing", "karras"),
    ("prediction_type", "flow"),
])
def test_unsupported_config_is_a_user_error(key, value):
    with pytest.raises(UserError) as info:
        DDIMConfig.from_scheduler_config({key: value})
    message = str(info.value)
    assert "\n" not in message and repr(value) in message and "expected" in message


def test_bad_step_count_is_a_user_error():
    sampler = DDIMSampler(DDIMConfig())
    for bad in (0, -3, 1001, 2.5):
        with pytest.raises(UserError):
            sampler.timesteps(bad)
    with pytest.raises(UserError):
        sampler.step(np.zeros(SHAPE, np.float32), 981, np.zeros(SHAPE, np.float32), 0)


def test_eta_needs_noise():
    sampler = DDIMSampler(DDIMConfig())
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match="variance_noise"):
        sampler.step(x, 981, x, 50, eta=0.5)
    with pytest.raises(ValueError):
        sampler.step(x, 981, x, 50, eta=-0.1)
    with pytest.raises(ValueError, match="shape"):
        sampler.step(x, 981, x, 50, eta=1.0, variance_noise=np.zeros((1, 4, 4, 4), np.float32))
    # eta = 0 ignores the noise: deterministic DDIM.
    a = sampler.step(x + 1, 981, x, 50, eta=0.0, variance_noise=np.ones(SHAPE, np.float32))
    b = sampler.step(x + 1, 981, x, 50, eta=0.0)
    np.testing.assert_array_equal(a.prev_sample, b.prev_sample)


def test_ddim_step_is_pure():
    rng = np.random.default_rng(2)
    eps, x = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    eps0, x0 = eps.copy(), x.copy()
    a = ddim_step(eps, x, np.float32(0.5), np.float32(0.7), clip_sample_range=1.0)
    b = ddim_step(eps, x, np.float32(0.5), np.float32(0.7), clip_sample_range=1.0)
    np.testing.assert_array_equal(a.prev_sample, b.prev_sample)
    np.testing.assert_array_equal(eps, eps0)
    np.testing.assert_array_equal(x, x0)
    # Formula (12) by hand with η = 0, no clipping.
    c = ddim_step(eps, x, np.float32(0.5), np.float32(0.7))
    x0_hat = (x - np.sqrt(0.5) * eps) / np.sqrt(0.5)
    np.testing.assert_allclose(c.pred_original_sample, x0_hat, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c.prev_sample, np.sqrt(0.7) * x0_hat + np.sqrt(0.3) * eps, rtol=1e-5, atol=1e-6)


def test_outputs_float32_from_other_dtypes():
    sampler = DDIMSampler(DDIMConfig())
    x = np.ones(SHAPE, np.float16)
    out = sampler.step(x, 981, x.astype(np.float64), 50, eta=1.0, variance_noise=np.ones(SHAPE))
    assert out.prev_sample.dtype == np.float32 and out.pred_original_sample.dtype == np.float32


def test_guidance_matches_torch():
    rng = np.random.default_rng(3)
    uncond, text = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    for scale in (1.0, 7.5, 0.0):
        u, c = torch.from_numpy(uncond), torch.from_numpy(text)
        expected = (u + scale * (c - u)).numpy()  # as in StableDiffusionPipeline
        got = guidance(uncond, text, scale)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(guidance(uncond, text, 1.0), text, rtol=0, atol=1e-6)  # c - u + u, O(1) values
    np.testing.assert_array_equal(guidance(uncond, text, 0.0), uncond)

