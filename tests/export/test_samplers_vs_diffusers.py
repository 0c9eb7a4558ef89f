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

import itertools
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
from tests.export.side_by_side import (BETAS, LONG, SHORT, SPACINGS, TAPS, DPMTap, EulerAncestralTap, EulerTap,
                                       PNDMTap, betas_name, check_schedule, check_timesteps_from_sigmas,
                                       compare_steps, ends_in_nan, grid)

# diffusers' schedulers call np.array() on torch tensors, which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

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
def test_ddim_matches_diffusers(beta_schedule, timestep_spacing, prediction_type, clip_sample, set_alpha_to_one,
                           steps_offset, eta):
    cfg = dict(beta_schedule=beta_schedule, timestep_spacing=timestep_spacing, prediction_type=prediction_type,
               clip_sample=clip_sample, set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset)
    if beta_schedule == "scaled_linear":
        cfg.update(beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's
    for n in STEP_COUNTS:
        run_both(cfg, n, eta)


@pytest.mark.parametrize("timestep_spacing,prediction_type", list(itertools.product(
    ("leading", "trailing", "linspace"), ("epsilon", "v_prediction", "sample"))))
def test_ddim_rescale_betas_zero_snr(timestep_spacing, prediction_type):
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
def test_ddim_clip_range_and_thresholding(clip_sample_range, thresholding):
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
def test_ddim_timesteps_every_count(spacing, steps_offset):
    scheduler = DDIMScheduler(timestep_spacing=spacing, steps_offset=steps_offset)
    sampler = DDIMSampler(DDIMConfig(timestep_spacing=spacing, steps_offset=steps_offset))
    for n in range(1, 1001):
        scheduler.set_timesteps(n)
        if int(scheduler.timesteps.max()) >= 1000:  # diffusers lists it, then indexes ᾱ past its end in step()
            with pytest.raises(UserError, match=f"{n} steps are too many for this scheduler.*use at most 999"):
                sampler.timesteps(n)
            continue
        np.testing.assert_array_equal(sampler.timesteps(n), scheduler.timesteps.numpy(), err_msg=f"n={n}")


@pytest.mark.parametrize("cfg", [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="linear", num_train_timesteps=37, beta_start=0.001, beta_end=0.05),
    dict(trained_betas=list(np.linspace(1e-4, 0.02, 1000))),
    dict(set_alpha_to_one=False),
])
def test_ddim_schedule_matches_diffusers(cfg):
    scheduler = DDIMScheduler(**cfg)
    sampler = DDIMSampler(DDIMConfig.from_scheduler_config(cfg))
    # Bit-identical: the same float32 linspace (fused multiply-adds) and the same
    # float64-accumulated cumprod as torch.
    np.testing.assert_array_equal(sampler.betas, scheduler.betas.numpy())
    np.testing.assert_array_equal(sampler.alphas_cumprod, scheduler.alphas_cumprod.numpy())
    assert sampler.alphas_cumprod.dtype == np.float32
    assert sampler.final_alpha_cumprod == scheduler.final_alpha_cumprod.numpy()


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddim_rescaled_schedule_matches_diffusers(beta_schedule):
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


# --- PNDM, DPM-Solver++, Euler, Euler ancestral -------------------------------------------------------


@pytest.mark.parametrize("cfg, n", grid({"skip_prk_steps": (True, False), "set_alpha_to_one": (True, False),
                                         "prediction_type": ("epsilon", "v_prediction")}, per_combination=6))
def test_pndm_matches_diffusers(cfg, n):
    scheduler = PNDMScheduler(**cfg)
    run = make_sampler("pndm", cfg).start(n)
    check_schedule(scheduler, run, n)
    compare_steps(scheduler, run, PNDMTap(scheduler))


@pytest.mark.parametrize("cfg, n", grid({
    "solver_order": (1, 2, 3), "solver_type": ("midpoint", "heun"), "use_karras_sigmas": (False, True),
    "final_sigmas_type": ("zero", "sigma_min"), "lower_order_final": (True, False), "euler_at_final": (False, True)},
    per_combination=1, rotated={"prediction_type": ("epsilon", "v_prediction", "sample")}))
def test_dpm_solver_pp_matches_diffusers(cfg, n):
    scheduler = DPMSolverMultistepScheduler(**cfg)
    if ends_in_nan(DPMSolverMultistepScheduler(**cfg), n):
        # The last step from σ_min to σ_min (Karras σ's, final "sigma_min") with an update that divides by
        # h = 0: diffusers returns NaN, the runtime refuses the config in one line.
        with pytest.raises(UserError, match="divides by h = 0"):
            make_sampler("dpmpp-2m", cfg).start(n)
        return
    run = make_sampler("dpmpp-2m", cfg).start(n)
    check_schedule(scheduler, run, n)
    compare_steps(scheduler, run, DPMTap(scheduler))


@pytest.mark.parametrize("cfg, n", grid({"use_karras_sigmas": (False, True), "final_sigmas_type": ("zero", "sigma_min"),
                                         "prediction_type": ("epsilon", "v_prediction", "sample")}, per_combination=6))
def test_euler_matches_diffusers(cfg, n):
    scheduler = EulerDiscreteScheduler(**cfg)
    run = make_sampler("euler", cfg).start(n)
    check_schedule(scheduler, run, n, exact_timesteps=not cfg["use_karras_sigmas"])
    if cfg["use_karras_sigmas"]:
        check_timesteps_from_sigmas(run, scheduler)
    compare_steps(scheduler, run, EulerTap(scheduler))


@pytest.mark.parametrize("cfg, n", grid({"prediction_type": ("epsilon", "v_prediction")}, per_combination=24))
def test_euler_ancestral_matches_diffusers(cfg, n):
    scheduler = EulerAncestralDiscreteScheduler(**cfg)
    run = make_sampler("euler-a", cfg).start(n)
    check_schedule(scheduler, run, n)
    compare_steps(scheduler, run, EulerAncestralTap(scheduler))


@pytest.mark.parametrize("name, scheduler_class", [("dpmpp-2m", DPMSolverMultistepScheduler),
                                                    ("euler", EulerDiscreteScheduler),
                                                    ("euler-a", EulerAncestralDiscreteScheduler)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sigma_samplers_rescale_betas_zero_snr(name, scheduler_class, prediction_type, spacing):
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
        check_schedule(scheduler, run, n)
        compare_steps(scheduler, run, TAPS[name](scheduler))


SCHEDULERS = {"pndm": PNDMScheduler, "dpmpp-2m": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
              "euler-a": EulerAncestralDiscreteScheduler}


@pytest.mark.parametrize("name, options", [("pndm", {}), ("pndm", {"skip_prk_steps": True}), ("dpmpp-2m", {}),
                                           ("dpmpp-2m", {"use_karras_sigmas": True}), ("euler", {}),
                                           ("euler", {"use_karras_sigmas": True}), ("euler-a", {})])
@pytest.mark.parametrize("betas", list(BETAS))
def test_schedules_at_many_step_counts(name, options, betas):
    """ᾱ's bit-identical, training σ's one ulp apart; at step counts 4 … 1000 (Karras: … 250, whose σ → t is
    slow) and each spacing, the schedules as in check_schedule."""
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
            if spacing == "leading" and n == 1000 and name != "dpmpp-2m":  # the first timestep would be T (DPM spaces n + 1)
                with pytest.raises(UserError, match="use at most 999 steps"):
                    sampler.start(n)
                continue
            run = sampler.start(n)
            check_schedule(scheduler, run, n, exact_timesteps=not karras_euler)
            if karras_euler:
                check_timesteps_from_sigmas(run, scheduler)


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
    check_schedule(scheduler, run, 20)
    if lambda_min_clipped == -3.0:  # it bites: the first timestep is below T - 1
        assert run.timesteps[0] < 990
    compare_steps(scheduler, run, DPMTap(scheduler))


@pytest.mark.parametrize("solver_order", [1, 2, 3])
def test_dpm_solver_thresholding(solver_order):
    # "sample" prediction of twice the range, so that dynamic thresholding bites.
    cfg = dict(BETAS["scaled_linear"], solver_order=solver_order, prediction_type="sample", thresholding=True,
               dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    scheduler, run = DPMSolverMultistepScheduler(**cfg), make_sampler("dpmpp-2m", cfg).start(20)
    check_schedule(scheduler, run, 20)
    compare_steps(scheduler, run, DPMTap(scheduler), output_scale=2.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_karras_sigma_bounds_from_the_config(prediction_type):
    """Euler reads sigma_min/sigma_max; DPM-Solver++ uses them too when they come with another scheduler's
    config (diffusers' from_config keeps them as hidden attributes)."""
    euler_cfg = dict(BETAS["scaled_linear"], use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0,
                     prediction_type=prediction_type)
    euler = EulerDiscreteScheduler(**euler_cfg)
    run = make_sampler("euler", euler_cfg).start(12)
    check_schedule(euler, run, 12, exact_timesteps=False)
    assert run.sigmas[0] == np.float32(10.0) and run.sigmas[-2] == np.float32(0.1)
    compare_steps(euler, run, EulerTap(euler))
    dpm = DPMSolverMultistepScheduler.from_config(euler.config)
    run = make_sampler("dpmpp-2m", dict(euler.config)).start(12)
    check_schedule(dpm, run, 12)
    assert run.sigmas[0] == np.float32(10.0)
    compare_steps(dpm, run, DPMTap(dpm))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_euler_continuous_timesteps_change_nothing_but_v_prediction(prediction_type):
    cfg = dict(BETAS["scaled_linear"], timestep_type="continuous", prediction_type=prediction_type)
    scheduler, run = EulerDiscreteScheduler(**cfg), make_sampler("euler", cfg).start(10)
    check_schedule(scheduler, run, 10)
    compare_steps(scheduler, run, EulerTap(scheduler))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_with_churn(prediction_type):
    """Algorithm 2's γ > 0 between s_tmin and s_tmax: noise drawn exactly at those steps."""
    cfg = dict(BETAS["scaled_linear"], prediction_type=prediction_type)
    churn = Churn(s_churn=2.0, s_tmin=0.5, s_tmax=5.0, s_noise=1.003)
    scheduler, run = EulerDiscreteScheduler(**cfg), EulerSampler(EulerConfig(**cfg), churn=churn).start(10)
    check_schedule(scheduler, run, 10)
    assert 0 < sum(churn.s_tmin <= s <= churn.s_tmax for s in run.sigmas[:-1]) < 10
    compare_steps(scheduler, run, EulerTap(scheduler, churn), s_churn=churn.s_churn, s_tmin=churn.s_tmin,
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
        ref = scheduler.step(torch.from_numpy(model_output), t, torch.from_numpy(sample), eta=eta, generator=theirs)
        out = run.step(model_output, i, sample, ours)
        old = sampler.step(model_output, int(t), sample, n, eta=eta, variance_noise=noise)
        np.testing.assert_array_equal(out, old.prev_sample)
        _, atol = ddim_tolerances(sampler, model_output, sample, noise, int(t), n, eta, old.pred_original_sample,
                                  ref.pred_original_sample.numpy())
        assert_close(out, ref.prev_sample.numpy(), atol, f"step {i}")
        sample = ref.prev_sample.numpy()
    np.testing.assert_array_equal(ours.randn(SHAPE), torch.randn(SHAPE, generator=theirs).numpy())


def test_the_grids_cover_every_pair_of_values():
    """Each step-by-step grid holds every pair of values of any two of its axes (step count included)."""
    for test in (test_pndm_matches_diffusers, test_dpm_solver_pp_matches_diffusers, test_euler_matches_diffusers,
                 test_euler_ancestral_matches_diffusers):
        rows = []
        for case in test.pytestmark[0].args[1]:
            cfg, n = case.values
            row = {k: repr(v) for k, v in cfg.items() if k not in ("beta_start", "beta_end", "trained_betas")}
            rows.append({**row, "beta_schedule": betas_name(cfg), "n": n})
        for a, b in itertools.combinations(rows[0], 2):
            values_a, values_b = {r[a] for r in rows}, {r[b] for r in rows}
            assert {(r[a], r[b]) for r in rows} == set(itertools.product(values_a, values_b)), (test.__name__, a, b)


# --- whole pipelines -----------------------------------------------------------------------------------

PIPELINE_CASES = [
    ("ddim", DDIMScheduler, {}),
    ("pndm", PNDMScheduler, {}),                                # PRK warm-up, then PLMS
    ("pndm", PNDMScheduler, {"skip_prk_steps": True}),          # Stable Diffusion 1.x's own scheduler
    ("dpmpp-2m", DPMSolverMultistepScheduler, {}),
    ("dpmpp-2m", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    ("euler", EulerDiscreteScheduler, {}),
    ("euler-a", EulerAncestralDiscreteScheduler, {}),           # draws noise at every step
]
PROMPT, SEED, STEPS, GUIDANCE = "a red circle on the left", 3, 8, 7.5


@pytest.fixture(scope="module", params=["tiny-sd", "sd-v"])
def model_and_bundle(request, tmp_path_factory):
    """A tiny model (epsilon, or v-prediction), its fp32 bundle serving 32x32, and its diffusers pipeline.
    The epsilon one is the session's tiny_sd / tiny_bundle (built once for all the tests)."""
    from diffusers import StableDiffusionPipeline

    from ldm_export.build import BuildConfig, build
    from tests.models import make

    if request.param == "tiny-sd":
        model, bundle = request.getfixturevalue("tiny_sd"), request.getfixturevalue("tiny_bundle")
    else:
        root = tmp_path_factory.mktemp(request.param)
        model, bundle = make(request.param, root / "model"), root / "bundle"
        build(BuildConfig(model=model, out=bundle, resolutions=((32, 32),)))
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return model, bundle, pipe


def _diffusers_run(pipe, scheduler_class, options: dict) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(uint8 image, latents after every UNet call, timesteps) from StableDiffusionPipeline with that scheduler
    (made from the model's own scheduler config, as a user switches schedulers)."""
    ddim = pipe.scheduler
    pipe.scheduler = scheduler_class.from_config(ddim.config, **options)
    latents = []

    def record(_pipe, _i, _t, kwargs):
        latents.append(kwargs["latents"].numpy().copy())
        return kwargs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and it does not fight a busy machine
    try:
        out = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=32, width=32,
                   output_type="np", generator=torch.Generator().manual_seed(SEED), callback_on_step_end=record)
        timesteps = pipe.scheduler.timesteps.numpy()
    finally:
        torch.set_num_threads(threads)
        pipe.scheduler = ddim
    return (out.images[0] * 255).round().astype(np.uint8), latents, timesteps


@pytest.mark.parametrize("name, scheduler_class, options", PIPELINE_CASES,
                         ids=[f"{n}{'-' + '-'.join(o) if o else ''}" for n, _, o in PIPELINE_CASES])
def test_pipeline_matches_diffusers(model_and_bundle, name, scheduler_class, options, tmp_path):
    """ldm_runtime's Pipeline with the sampler vs StableDiffusionPipeline with the scheduler, same seed: the
    latents after every UNet call within the fp32 trajectory tolerance, the images within 2 levels."""
    from ldm_runtime.bundle import open_bundle
    from ldm_runtime.metrics import compare
    from ldm_runtime.pipeline import Components, Pipeline
    from ldm_runtime.request import Request
    from ldm_runtime.runners import RunnerOptions
    from ldm_runtime.tolerances import IMAGE_TOLERANCES, TRAJECTORY_TOLERANCES
    from tests.bundle_edits import edit

    _, bundle, diffusers_pipe = model_and_bundle
    if options:  # a sampler's options are the bundle's scheduler config
        shutil.copytree(bundle, tmp_path / "bundle")
        bundle = tmp_path / "bundle"
        edit(bundle, lambda m: m["scheduler"].update(options))
    b = open_bundle(bundle)
    pipeline = Pipeline(b, Components(b, options=RunnerOptions(threads=1)))
    ours = pipeline.generate(Request(prompt=PROMPT, steps=STEPS, guidance_scale=GUIDANCE, seed=SEED,
                                            width=32, height=32, sampler=name), trace=True)
    image, latents, timesteps = _diffusers_run(diffusers_pipe, scheduler_class, options)
    np.testing.assert_allclose(ours.timesteps, timesteps, rtol=0, atol=0)
    assert len(ours.latents) == len(latents) == len(timesteps)
    tol = TRAJECTORY_TOLERANCES["fp32"]
    for i, (a, b) in enumerate(zip(ours.latents, latents)):
        m = compare(a, b)
        assert m["rel_l2"] <= tol.rel_l2 and m["cosine"] >= tol.min_cosine, (i, m)
    assert int(np.abs(ours.image.astype(int) - image.astype(int)).max()) <= IMAGE_TOLERANCES["fp32"].max_uint8_diff
