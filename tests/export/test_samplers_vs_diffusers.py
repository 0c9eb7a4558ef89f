"""The numpy samplers against diffusers: scheduler by scheduler, step by step, and whole pipelines.

Step by step: each sampler and its diffusers scheduler are built from one config dict, over
every combination of the options below; the timesteps must be identical (σ's: one ulp, see
tests/export/sampler_oracle.py), then both step through a run fed the same random model
outputs and, where a step draws noise, the same noise stream (TorchCompatGenerator here,
``torch.Generator().manual_seed`` there). Every step runs on diffusers' previous output, so
each is compared on identical inputs, within the derived bound of sampler_oracle.py (a
multistep history carries its own bound). At the end both generators must be at the same
place in their streams: the same number of draws.

Whole pipelines: a bundle of the tiny SD model and of the v-prediction one, through
``ldm_runtime`` with each sampler, against ``StableDiffusionPipeline`` with that scheduler.

DDIM: the original per-config cases (tests/export/ddim_oracle.py), and its run through the
sampler interface.
"""

from __future__ import annotations

import inspect
import itertools
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler)

from ldm_runtime.errors import UserError
from ldm_runtime.noise import TorchCompatGenerator
from ldm_runtime.samplers import DDIMConfig, DDIMSampler, guidance, make_sampler
from ldm_runtime.samplers.euler import Churn, EulerConfig, EulerSampler
from ldm_runtime.samplers.schedule import torch_linspace_float32
from tests.export import sampler_oracle as so
from tests.export.ddim_oracle import SHAPE, STEP_COUNTS, assert_close, ddim_tolerances, run_both
from tests.export.sampler_oracle import Err

# --- DDIM --------------------------------------------------------------------------------------


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
        run_both(cfg, n, eta)


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
            run_both(cfg, n, eta=0.0, share_schedule=True)
            run_both(dict(cfg, clip_sample=True), n, eta=1.0, share_schedule=True)


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
        atol_x0, atol_prev = ddim_tolerances(sampler, model_output, sample, None, int(t), 10, 0.0,
                                         out.pred_original_sample, ref.pred_original_sample.numpy())
        assert_close(out.pred_original_sample, ref.pred_original_sample.numpy(), atol_x0, f"x_0 at t={t}")
        assert_close(out.prev_sample, ref.prev_sample.numpy(), atol_prev, f"x_t-1 at t={t}")
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
        np.testing.assert_array_equal(torch_linspace_float32(start, end, steps), expected)


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


# --- the grid of configurations ------------------------------------------------------------------

BETAS = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),  # SD's
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "trained": dict(trained_betas=np.linspace(1e-4, 0.02, 1000).tolist()),
}
SPACINGS = ("leading", "trailing", "linspace")
SHORT, LONG = 8, 50  # < 15 steps: DPM-Solver's lower-order ending; PRK is 3 of PNDM's 8 steps


def grid(options: dict[str, tuple], per_combination: int, rotated: dict[str, tuple] | None = None) -> list:
    """(config, step count) cases: every combination of ``options``, each with ``per_combination`` schedules
    (betas × spacing × steps_offset, × the ``rotated`` axes), taken in turn with a stride prime to their
    number, so that neighbouring combinations get unrelated ones and every value meets every other axis.
    The step count alternates with the parity of the value indices: every value runs short and long."""
    axes = {"betas": tuple(BETAS), "timestep_spacing": SPACINGS, "steps_offset": (0, 1), **(rotated or {})}
    schedules = list(itertools.product(*(range(len(v)) for v in axes.values())))
    stride = 7 if len(schedules) % 7 else 11
    cases, k = [], 0
    for idx in itertools.product(*(range(len(v)) for v in options.values())):
        for _ in range(per_combination):
            pick = schedules[(stride * k) % len(schedules)]
            k += 1
            values = {**{name: options[name][j] for name, j in zip(options, idx)},
                      **{name: axes[name][j] for name, j in zip(axes, pick)}}
            n = (SHORT, LONG)[(sum(idx) + sum(pick)) % 2]
            cfg = {**BETAS[values.pop("betas")], **values}
            label = "-".join([f"{key}={value}" for key, value in values.items()]
                             + [_betas_name(cfg), f"n{n}"])
            cases.append(pytest.param(cfg, n, id=label))
    return cases


def _betas_name(cfg: dict) -> str:
    return "trained" if "trained_betas" in cfg else cfg["beta_schedule"]


# --- running both ---------------------------------------------------------------------------------


def _check_schedule(scheduler, run, n: int, exact_timesteps: bool = True) -> None:
    """Timesteps identical (dtype too); σ's and init_noise_sigma at most two ulps apart: the training σ's are
    one ulp apart (torch's sqrt), and each side rounds an interpolation (or sqrt(σ² + 1)) of them once."""
    scheduler.set_timesteps(n)
    theirs = scheduler.timesteps.numpy()
    assert run.timesteps.dtype == theirs.dtype and run.timesteps.shape == theirs.shape
    if exact_timesteps:
        np.testing.assert_array_equal(run.timesteps, theirs)
    if isinstance(getattr(scheduler, "sigmas", None), torch.Tensor):
        assert so.ulps_apart(run.sigmas, scheduler.sigmas.numpy()) <= 2
    assert so.ulps_apart(run.init_noise_sigma, float(scheduler.init_noise_sigma)) <= 2


def _begin_at_the_first_sigma(scheduler) -> None:
    """A repeated first timestep (DPM-Solver++ with Karras σ's on the cosine schedule: 998, 998, …) makes
    diffusers start at its *second* σ (index_for_timestep) and fail with an IndexError at the end; the
    runtime starts at the first, as diffusers does when told to (set_begin_index, as img2img does)."""
    if int((scheduler.timesteps == scheduler.timesteps[0]).sum()) > 1:
        scheduler.set_begin_index(0)


def _compare_steps(scheduler, run, tap, seed: int = 0, output_scale: float = 1.0, **step_kwargs) -> list[float]:
    """Step both, each step on diffusers' previous output, with model outputs ~ N(0, output_scale²);
    returns each step's bound tightness."""
    with np.errstate(all="ignore"):  # the bounds' arithmetic meets inf (log 0 at σ = 0) and 0 · inf
        return _compare_steps_unchecked(scheduler, run, tap, seed, np.float32(output_scale), **step_kwargs)


def _compare_steps_unchecked(scheduler, run, tap, seed: int, output_scale, **step_kwargs) -> list[float]:
    rng = np.random.default_rng(seed)
    ours, theirs = TorchCompatGenerator(seed), torch.Generator().manual_seed(seed)
    _begin_at_the_first_sigma(scheduler)
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = theirs
    sample = (rng.standard_normal(SHAPE).astype(np.float32) * np.float32(run.init_noise_sigma)).astype(np.float32)
    tightness = []
    for i, t in enumerate(scheduler.timesteps):
        where = f"call {i} of {len(run.timesteps)} (t={float(t):g})"
        ref_in = scheduler.scale_model_input(torch.from_numpy(sample), t).numpy()
        so.assert_within(run.scale_model_input(sample, i), ref_in, tap.scale_input(i, sample), f"input, {where}")
        model_output = (output_scale * rng.standard_normal(SHAPE)).astype(np.float32)
        ref = scheduler.step(torch.from_numpy(model_output), t, torch.from_numpy(sample), **step_kwargs)
        ref = ref.prev_sample.numpy()
        bound = tap.step(i, model_output, sample)
        so.assert_within(run.step(model_output, i, sample, ours), ref, bound, where)
        tightness.append(so.relative_bound(bound))
        sample = ref
    # the same draws, in the same order: both streams go on alike
    np.testing.assert_array_equal(ours.randn(SHAPE), torch.randn(SHAPE, generator=theirs).numpy())
    # The bound is not vacuous: its median allowance, relative to the value (measured medians: 1e-6 … 4e-5;
    # up to 2e-3 for DPM-Solver++ 3M, whose second differences of uncorrelated random x_θ's amplify roundoff).
    assert np.median(tightness) < tap.TIGHTNESS, f"the bound is loose: median {np.median(tightness):.3g} relative"
    return tightness


class SigmaTap:
    """The bound of a σ-parameterised step; ``mirror`` replays diffusers' noise stream."""

    TIGHTNESS = 2e-4

    def __init__(self, scheduler, seed: int = 0):
        self.scheduler, self.mirror = scheduler, torch.Generator().manual_seed(seed)

    def sigma(self, k: int) -> Err:
        return so.schedule_sigma(self.scheduler.sigmas.numpy()[k])

    def scale_input(self, i: int, sample) -> Err:
        return so.scale_input_bound(sample, self.sigma(i))

    def noise(self) -> np.ndarray:
        return torch.randn(SHAPE, generator=self.mirror).numpy()


class EulerTap(SigmaTap):
    def __init__(self, scheduler, churn: Churn = Churn()):
        super().__init__(scheduler)
        self.churn = churn

    def step(self, i: int, model_output, sample) -> Err:
        c, sigmas = self.churn, self.scheduler.sigmas
        gamma = min(c.s_churn / (len(sigmas) - 1), 2**0.5 - 1) if c.s_tmin <= sigmas[i] <= c.s_tmax else 0.0
        return so.euler_bound(model_output, sample, self.sigma(i), self.sigma(i + 1),
                              self.scheduler.config.prediction_type, gamma,
                              self.noise() if gamma > 0 else None, c.s_noise)


class EulerAncestralTap(SigmaTap):
    def step(self, i: int, model_output, sample) -> Err:
        return so.euler_ancestral_bound(model_output, sample, self.sigma(i), self.sigma(i + 1), self.noise(),
                                        self.scheduler.config.prediction_type)


class PNDMTap:
    """Records diffusers' calls of formula (9) (x_t, t, t − δ, e′): e′ is bit-identical on both sides
    (the same float32 sums of the same model outputs), so ours is bounded by that call's roundings."""

    TIGHTNESS = 2e-4

    def __init__(self, scheduler):
        self.scheduler, self.calls = scheduler, []
        transfer = scheduler._get_prev_sample

        def record(sample, timestep, prev_timestep, model_output):
            self.calls.append((sample.numpy().copy(), int(timestep), int(prev_timestep), model_output.numpy().copy()))
            return transfer(sample, timestep, prev_timestep, model_output)

        scheduler._get_prev_sample = record

    def scale_input(self, i: int, sample) -> Err:
        return Err(sample)

    def step(self, i: int, model_output, sample) -> Err:
        x, t, prev_t, e = self.calls[-1]
        s = self.scheduler
        ac = s.alphas_cumprod.numpy()
        a_prev = ac[prev_t] if prev_t >= 0 else s.final_alpha_cumprod.numpy()
        return so.pndm_bound(x, e, Err(ac[t]), Err(a_prev), s.config.prediction_type == "v_prediction")


class DPMTap(SigmaTap):
    """Records diffusers' x_θ and which update (order) it ran; the x_θ history keeps its bounds."""

    UPDATES = ("dpm_solver_first_order_update", "multistep_dpm_solver_second_order_update",
               "multistep_dpm_solver_third_order_update")

    def __init__(self, scheduler):
        super().__init__(scheduler)
        self.TIGHTNESS = 1e-2 if scheduler.config.solver_order == 3 else SigmaTap.TIGHTNESS
        self.orders, self.history, self.x0 = [], [], None
        convert = scheduler.convert_model_output

        def record_x0(*a, **k):
            out = convert(*a, **k)
            self.x0 = out.numpy().copy()
            return out

        scheduler.convert_model_output = record_x0
        for order, name in enumerate(self.UPDATES, start=1):
            setattr(scheduler, name, self._recording(getattr(scheduler, name), order))

    def _recording(self, update, order: int):
        def record(*a, **k):
            self.orders.append(order)
            return update(*a, **k)
        return record

    def scale_input(self, i: int, sample) -> Err:
        return Err(sample)

    def step(self, i: int, model_output, sample) -> Err:
        cfg = self.scheduler.config
        x0 = so.dpm_x0_bound(model_output, sample, self.sigma(i), cfg.prediction_type)
        if cfg.thresholding:
            x0 = so.threshold_bound(x0, self.x0)
        self.history.append(Err(self.x0, x0.e))
        sigmas = [self.sigma(k) for k in (i + 1, i, i - 1, i - 2)]
        return so.dpm_update_bound(self.orders[-1], sample, self.history, sigmas, cfg.solver_type)


TAPS = {"pndm": PNDMTap, "dpmpp-2m": DPMTap, "euler": EulerTap, "euler-a": EulerAncestralTap}


# --- PNDM, DPM-Solver++, Euler, Euler ancestral -------------------------------------------------------


@pytest.mark.parametrize("cfg, n", grid({"skip_prk_steps": (True, False), "set_alpha_to_one": (True, False),
                                         "prediction_type": ("epsilon", "v_prediction")}, per_combination=6))
def test_pndm_matches_diffusers(cfg, n):
    scheduler = PNDMScheduler(**cfg)
    run = make_sampler("pndm", cfg).start(n)
    _check_schedule(scheduler, run, n)
    _compare_steps(scheduler, run, PNDMTap(scheduler))


@pytest.mark.parametrize("cfg, n", grid({
    "solver_order": (1, 2, 3), "solver_type": ("midpoint", "heun"), "use_karras_sigmas": (False, True),
    "final_sigmas_type": ("zero", "sigma_min"), "lower_order_final": (True, False), "euler_at_final": (False, True)},
    per_combination=1, rotated={"prediction_type": ("epsilon", "v_prediction", "sample")}))
def test_dpm_solver_pp_matches_diffusers(cfg, n):
    scheduler = DPMSolverMultistepScheduler(**cfg)
    if _ends_in_nan(DPMSolverMultistepScheduler(**cfg), n):
        # The last step from σ_min to σ_min (Karras σ's, final "sigma_min") with an update that divides by
        # h = 0: diffusers returns NaN, the runtime refuses the config in one line.
        with pytest.raises(UserError, match="divides by h = 0"):
            make_sampler("dpmpp-2m", cfg).start(n)
        return
    run = make_sampler("dpmpp-2m", cfg).start(n)
    _check_schedule(scheduler, run, n)
    _compare_steps(scheduler, run, DPMTap(scheduler))


@pytest.mark.parametrize("cfg, n", grid({"use_karras_sigmas": (False, True), "final_sigmas_type": ("zero", "sigma_min"),
                                         "prediction_type": ("epsilon", "v_prediction", "sample")}, per_combination=6))
def test_euler_matches_diffusers(cfg, n):
    scheduler = EulerDiscreteScheduler(**cfg)
    run = make_sampler("euler", cfg).start(n)
    _check_schedule(scheduler, run, n, exact_timesteps=not cfg["use_karras_sigmas"])
    if cfg["use_karras_sigmas"]:
        _check_timesteps_from_sigmas(run, scheduler)
    _compare_steps(scheduler, run, EulerTap(scheduler))


@pytest.mark.parametrize("cfg, n", grid({"prediction_type": ("epsilon", "v_prediction")}, per_combination=24))
def test_euler_ancestral_matches_diffusers(cfg, n):
    scheduler = EulerAncestralDiscreteScheduler(**cfg)
    run = make_sampler("euler-a", cfg).start(n)
    _check_schedule(scheduler, run, n)
    _compare_steps(scheduler, run, EulerAncestralTap(scheduler))


def _ends_in_nan(scheduler, n: int) -> bool:
    """Whether diffusers' run of n steps (on random model outputs) ends in NaN."""
    scheduler.set_timesteps(n)
    _begin_at_the_first_sigma(scheduler)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in scheduler.timesteps:
            x = scheduler.step(torch.randn(SHAPE, generator=torch.Generator().manual_seed(int(t))), t, x).prev_sample
    return bool(torch.isnan(x).any())


def _check_timesteps_from_sigmas(run, scheduler) -> None:
    """Karras σ's -> timesteps (``sigma_to_t``) are float32 fractions, here as in diffusers, from log σ's one
    ulp apart: t = k + w, w = (L_k − ℓ)/(L_k − L_{k+1}), so |Δt| ≤ (|Δℓ| + |ΔL_k| + |ΔL_{k+1}|)/|L_k − L_{k+1}|
    + ulp(t) (each side rounds t once). ℓ = log σ of a Karras σ, whose ends are 1 ulp apart: |Δℓ| ≤ 2⁻²³;
    L = numpy's float32 log of a training σ (1 ulp apart, log ≤ 4 ulps from exact): |ΔL| ≤ 2⁻²³ + 8 ulp(L)."""
    log_sigmas = np.log(np.array(((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5))
    theirs = scheduler.timesteps.numpy()
    k = np.clip(np.floor(theirs).astype(int), 0, len(log_sigmas) - 2)
    lo, hi = log_sigmas[k].astype(np.float64), log_sigmas[k + 1].astype(np.float64)
    d_log = 2.0**-23 + 8 * np.spacing(np.maximum(np.abs(lo), np.abs(hi)).astype(np.float32)).astype(np.float64)
    bound = (2.0**-23 + 2 * d_log) / np.abs(lo - hi) + np.spacing(theirs).astype(np.float64)
    diff = np.abs(run.timesteps.astype(np.float64) - theirs)
    assert (diff <= bound).all(), f"timesteps {run.timesteps[diff > bound]} vs {theirs[diff > bound]}"


@pytest.mark.parametrize("name, scheduler_class", [("dpmpp-2m", DPMSolverMultistepScheduler),
                                                    ("euler", EulerDiscreteScheduler),
                                                    ("euler-a", EulerAncestralDiscreteScheduler)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_rescale_betas_zero_snr(name, scheduler_class, prediction_type, spacing):
    """ᾱ_T = 0 floored to 2⁻²⁴ (σ_max ≈ 4096). The rescaled betas go through torch's sqrt, so their ᾱ's are a
    few ulps apart (bounded in test_rescaled_schedule_matches_diffusers): the steps run on ours, on both sides."""
    cfg = dict(BETAS["scaled_linear"], rescale_betas_zero_snr=True, prediction_type=prediction_type,
               timestep_spacing=spacing)
    sampler = make_sampler(name, cfg)
    for n in (SHORT, LONG):
        scheduler = scheduler_class(**cfg)
        assert sampler.alphas_cumprod[-1] == 2.0**-24 == scheduler.alphas_cumprod[-1].item()
        ac = torch.from_numpy(sampler.alphas_cumprod.copy())
        scheduler.alphas_cumprod = ac
        scheduler.lambda_t = torch.log(torch.sqrt(ac)) - torch.log(torch.sqrt(1 - ac))  # DPM-Solver's, from ᾱ
        run = sampler.start(n)
        _check_schedule(scheduler, run, n)
        _compare_steps(scheduler, run, TAPS[name](scheduler))


SCHEDULERS = {"pndm": PNDMScheduler, "dpmpp-2m": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
              "euler-a": EulerAncestralDiscreteScheduler}


@pytest.mark.parametrize("name, options", [("pndm", {}), ("pndm", {"skip_prk_steps": True}), ("dpmpp-2m", {}),
                                           ("dpmpp-2m", {"use_karras_sigmas": True}), ("euler", {}),
                                           ("euler", {"use_karras_sigmas": True}), ("euler-a", {})])
@pytest.mark.parametrize("betas", list(BETAS))
def test_schedules_at_many_step_counts(name, options, betas):
    """ᾱ's bit-identical, training σ's one ulp apart; at step counts 4 … 1000 (Karras: … 250, whose σ → t is
    slow) and each spacing, the schedules as in _check_schedule."""
    for spacing in SPACINGS:
        cfg = dict(BETAS[betas], timestep_spacing=spacing, steps_offset=1, **options)
        sampler, scheduler = make_sampler(name, cfg), SCHEDULERS[name](**cfg)
        np.testing.assert_array_equal(sampler.alphas_cumprod, scheduler.alphas_cumprod.numpy())
        if name != "pndm":  # σ_t = sqrt((1 − ᾱ_t)/ᾱ_t), torch's sqrt one ulp from ours
            ac = scheduler.alphas_cumprod
            assert so.ulps_apart(sampler.train_sigmas, (((1 - ac) / ac) ** 0.5).numpy()) <= 1
        karras_euler = name == "euler" and options.get("use_karras_sigmas")
        for n in (4, 5, 7, 10, 15, 20, 25, 30, 50, 75, 100, 150, 250, *(() if "use_karras_sigmas" in options
                                                                         else (500, 999, 1000))):
            run = sampler.start(n)
            _check_schedule(scheduler, run, n, exact_timesteps=not karras_euler)
            if karras_euler:
                _check_timesteps_from_sigmas(run, scheduler)


def test_pndm_refuses_the_step_counts_diffusers_cannot_run():
    for n in (1, 2, 3):  # the Runge-Kutta warm-up needs four of the spaced timesteps
        with pytest.raises(ValueError, match="broadcast"):
            PNDMScheduler().set_timesteps(n)
        with pytest.raises(UserError, match=f"needs at least 4 steps; got {n}"):
            make_sampler("pndm", {}).start(n)


@pytest.mark.parametrize("lambda_min_clipped", [-5.1, -3.0])
@pytest.mark.parametrize("betas", ["linear", "cosine"])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_dpm_solver_lambda_min_clipped(lambda_min_clipped, betas, spacing):
    """The run stops before λ drops below lambda_min_clipped (the cosine schedule's use: -5.1)."""
    cfg = dict(BETAS[betas], timestep_spacing=spacing, lambda_min_clipped=lambda_min_clipped)
    scheduler, run = DPMSolverMultistepScheduler(**cfg), make_sampler("dpmpp-2m", cfg).start(20)
    _check_schedule(scheduler, run, 20)
    if lambda_min_clipped == -3.0:  # it bites: the first timestep is below T - 1
        assert run.timesteps[0] < 990
    _compare_steps(scheduler, run, DPMTap(scheduler))


@pytest.mark.parametrize("solver_order", [1, 2, 3])
def test_dpm_solver_thresholding(solver_order):
    # "sample" prediction of twice the range, so that dynamic thresholding bites.
    cfg = dict(BETAS["scaled_linear"], solver_order=solver_order, prediction_type="sample", thresholding=True,
               dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    scheduler, run = DPMSolverMultistepScheduler(**cfg), make_sampler("dpmpp-2m", cfg).start(20)
    _check_schedule(scheduler, run, 20)
    _compare_steps(scheduler, run, DPMTap(scheduler), output_scale=2.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_karras_sigma_bounds_from_the_config(prediction_type):
    """Euler reads sigma_min/sigma_max; DPM-Solver++ uses them too when they come with another scheduler's
    config (diffusers' from_config keeps them as hidden attributes)."""
    euler_cfg = dict(BETAS["scaled_linear"], use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0,
                     prediction_type=prediction_type)
    euler = EulerDiscreteScheduler(**euler_cfg)
    run = make_sampler("euler", euler_cfg).start(12)
    _check_schedule(euler, run, 12, exact_timesteps=False)
    assert run.sigmas[0] == np.float32(10.0) and run.sigmas[-2] == np.float32(0.1)
    _compare_steps(euler, run, EulerTap(euler))
    dpm = DPMSolverMultistepScheduler.from_config(euler.config)
    run = make_sampler("dpmpp-2m", dict(euler.config)).start(12)
    _check_schedule(dpm, run, 12)
    assert run.sigmas[0] == np.float32(10.0)
    _compare_steps(dpm, run, DPMTap(dpm))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_with_churn(prediction_type):
    """Algorithm 2's γ > 0 between s_tmin and s_tmax: noise drawn exactly at those steps."""
    cfg = dict(BETAS["scaled_linear"], prediction_type=prediction_type)
    churn = Churn(s_churn=2.0, s_tmin=0.5, s_tmax=5.0, s_noise=1.003)
    scheduler, run = EulerDiscreteScheduler(**cfg), EulerSampler(EulerConfig(**cfg), churn=churn).start(10)
    _check_schedule(scheduler, run, 10)
    assert 0 < sum(churn.s_tmin <= s <= churn.s_tmax for s in run.sigmas[:-1]) < 10
    _compare_steps(scheduler, run, EulerTap(scheduler, churn), s_churn=churn.s_churn, s_tmin=churn.s_tmin,
                   s_tmax=churn.s_tmax, s_noise=churn.s_noise)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_run_draws_its_noise_as_diffusers(eta, spacing):
    """The DDIM run (the interface) is DDIMSampler.step with noise from the run's generator, drawn when
    diffusers' step(eta=..., generator=...) draws it; against diffusers with the DDIM tolerance."""
    cfg = dict(BETAS["scaled_linear"], timestep_spacing=spacing, steps_offset=1, clip_sample=False)
    scheduler, sampler = DDIMScheduler(**cfg), make_sampler("ddim", cfg)
    run, n = sampler.start(10, eta=eta), 10
    scheduler.set_timesteps(n)
    np.testing.assert_array_equal(run.timesteps, scheduler.timesteps.numpy())
    rng = np.random.default_rng(0)
    ours, theirs, mirror = (TorchCompatGenerator(1), torch.Generator().manual_seed(1),
                            TorchCompatGenerator(1))
    sample = rng.standard_normal(SHAPE).astype(np.float32)
    for i, t in enumerate(scheduler.timesteps):
        model_output = rng.standard_normal(SHAPE).astype(np.float32)
        noise = mirror.randn(SHAPE) if eta > 0 else None
        ref = scheduler.step(torch.from_numpy(model_output), t, torch.from_numpy(sample), eta=eta,
                             generator=theirs).prev_sample.numpy()
        out = run.step(model_output, i, sample, ours)
        old = sampler.step(model_output, int(t), sample, n, eta=eta, variance_noise=noise)
        np.testing.assert_array_equal(out, old.prev_sample)
        _, atol = ddim_tolerances(sampler, model_output, sample, noise, int(t), n, eta, old.pred_original_sample,
                                  old.pred_original_sample)
        assert_close(out, ref, atol, f"step {i}")
        sample = ref
    np.testing.assert_array_equal(ours.randn(SHAPE), torch.randn(SHAPE, generator=theirs).numpy())


def test_the_grids_cover_every_pair_of_values():
    """Each step-by-step grid holds every pair of values of any two of its axes (step count included)."""
    for test in (test_pndm_matches_diffusers, test_dpm_solver_pp_matches_diffusers, test_euler_matches_diffusers,
                 test_euler_ancestral_matches_diffusers):
        rows = []
        for case in test.pytestmark[0].args[1]:
            cfg, n = case.values
            row = {k: repr(v) for k, v in cfg.items() if k not in ("beta_start", "beta_end", "trained_betas")}
            rows.append({**row, "beta_schedule": _betas_name(cfg), "n": n})
        for a, b in itertools.combinations(rows[0], 2):
            values_a, values_b = {r[a] for r in rows}, {r[b] for r in rows}
            assert {(r[a], r[b]) for r in rows} == set(itertools.product(values_a, values_b)), (test.__name__, a, b)
