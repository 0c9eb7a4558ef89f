"""The samplers without torch: the registry, the defaults, and the one-line refusals (what each sampler
computes is checked against diffusers in tests/export/test_samplers_vs_diffusers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_runtime.errors import UserError
from ldm_runtime.noise import TorchCompatGenerator
from ldm_runtime.samplers import SAMPLERS, DDIMConfig, DDIMSampler, ddim_step, make_sampler
from ldm_runtime.samplers.dpm_solver import DPMSolverSampler
from ldm_runtime.samplers.euler import EulerSampler
from ldm_runtime.samplers.pndm import PNDMSampler

SHAPE = (1, 4, 8, 8)
SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
                "set_alpha_to_one": False, "skip_prk_steps": True, "clip_sample": False}


# --- DDIM (from the former tests/runtime/test_sampler.py) ----------------------------------


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


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("cfg,where", [
    ({"beta_end": 1.5}, "beta 1.00"),                                     # β past 1 near the end: ᾱ < 0
    ({"beta_end": 1e300}, "beta nan at timestep 0"),                      # sqrt(β) overflows float32
    ({"trained_betas": [0.1, 1.0, 0.3], "num_train_timesteps": 3}, "beta 1 at timestep 1 of 3"),  # 1: last only
    ({"trained_betas": [0.1, -0.2, 0.3], "num_train_timesteps": 3}, "beta -0.2 at timestep 1 of 3"),
])
def test_betas_outside_0_1_are_refused_by_every_sampler(name, cfg, where):
    """A schedule whose betas leave [0, 1) is refused when the sampler is made, naming the first bad beta,
    instead of NaN images blamed on the UNet later."""
    with pytest.raises(UserError, match="the scheduler's betas must lie in \\[0, 1\\)") as info:
        make_sampler(name, {**SD_SCHEDULER, **cfg})
    assert where in str(info.value) and "\n" not in str(info.value)


def test_a_zero_snr_schedule_may_end_at_beta_1():
    sampler = make_sampler("ddim", {**SD_SCHEDULER, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"})
    assert sampler.betas[-1] == 1.0 and (sampler.betas[:-1] < 1).all()


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


# --- every sampler -----------------------------------------------------------------------


def test_registry_names_one_sampler_per_diffusers_class():
    assert list(SAMPLERS) == ["ddim", "pndm", "dpmpp-2m", "euler", "euler-a"]
    assert [c.diffusers_class for c in SAMPLERS.values()] == [
        "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler"]
    assert all(cls.name == name for name, cls in SAMPLERS.items())


@pytest.mark.parametrize("scheduler_class, expected", [
    *[(cls.diffusers_class, cls) for cls in SAMPLERS.values()],
    ("LMSDiscreteScheduler", DDIMSampler),   # a scheduler we do not have: DDIM
    (None, DDIMSampler),                     # a bundle that names none
])
def test_make_sampler_defaults_to_the_bundles_scheduler(scheduler_class, expected):
    sampler = make_sampler(None, SD_SCHEDULER, scheduler_class)
    assert type(sampler) is expected
    assert sampler.config.beta_schedule == "scaled_linear" and sampler.config.steps_offset == 1


def test_a_named_sampler_wins_over_the_bundles_class():
    assert type(make_sampler("euler", SD_SCHEDULER, "PNDMScheduler")) is EulerSampler


def test_unknown_sampler_names_the_supported_ones():
    with pytest.raises(UserError) as info:
        make_sampler("heun", SD_SCHEDULER, None)
    message = str(info.value)
    assert "\n" not in message and "'heun'" in message
    assert all(name in message for name in SAMPLERS)


@pytest.mark.parametrize("name, key, value, supported", [
    ("dpmpp-2m", "algorithm_type", "sde-dpmsolver++", "'dpmsolver++'"),
    ("dpmpp-2m", "algorithm_type", "dpmsolver", "'dpmsolver++'"),
    ("dpmpp-2m", "algorithm_type", "sde-dpmsolver", "'dpmsolver++'"),
    ("dpmpp-2m", "solver_order", 4, "1, 2, 3"),
    ("dpmpp-2m", "use_exponential_sigmas", True, "use_karras_sigmas"),
    ("dpmpp-2m", "use_beta_sigmas", True, "use_karras_sigmas"),
    ("dpmpp-2m", "use_lu_lambdas", True, "use_karras_sigmas"),
    ("dpmpp-2m", "use_flow_sigmas", True, "use_karras_sigmas"),
    ("dpmpp-2m", "variance_type", "learned_range", "solver_order"),
    ("dpmpp-2m", "prediction_type", "flow_prediction", "'v_prediction'"),
    ("dpmpp-2m", "final_sigmas_type", "sigma_max", "'sigma_min'"),
    ("euler", "use_exponential_sigmas", True, "use_karras_sigmas"),
    ("euler", "use_beta_sigmas", True, "use_karras_sigmas"),
    ("euler", "timestep_type", "edm", "'continuous'"),
    ("euler", "interpolation_type", "log_linear", "linear"),
    ("euler-a", "prediction_type", "sample", "'v_prediction'"),
    ("pndm", "prediction_type", "sample", "'v_prediction'"),
    ("pndm", "timestep_spacing", "karras", "'linspace'"),
    ("ddim", "beta_schedule", "cosine", "'squaredcos_cap_v2'"),
])
def test_unsupported_configs_are_refused_in_one_line(name, key, value, supported):
    with pytest.raises(UserError) as info:
        make_sampler(name, {key: value}, None)
    message = str(info.value)
    assert "\n" not in message and repr(value) in message and key in message
    assert SAMPLERS[name].diffusers_class in message and supported in message


def test_continuous_timesteps_are_refused_only_where_diffusers_uses_them():
    """EulerDiscreteScheduler's timestep_type="continuous" changes the timesteps for v_prediction only."""
    assert make_sampler("euler", {"timestep_type": "continuous"}).start(5).timesteps.dtype == np.float32
    with pytest.raises(UserError, match="unsupported timestep_type for euler .*got 'continuous'; expected 'discrete'"):
        make_sampler("euler", {"timestep_type": "continuous", "prediction_type": "v_prediction"})


def test_configs_of_deis_and_unipc_map_to_dpm_solver_pp_as_in_diffusers():
    config = make_sampler("dpmpp-2m", {"algorithm_type": "deis", "solver_type": "bh2"}).config
    assert (config.algorithm_type, config.solver_type) == ("dpmsolver++", "midpoint")


def test_keys_that_took_their_schedulers_default_are_not_carried_over():
    """diffusers' from_config skips ``_use_default_values``: a DDIM config's default "leading" spacing
    does not override Euler's default "linspace"."""
    cfg = {"timestep_spacing": "leading", "_use_default_values": ["timestep_spacing"]}
    assert make_sampler("euler", cfg).config.timestep_spacing == "linspace"
    assert make_sampler("euler", {"timestep_spacing": "leading"}).config.timestep_spacing == "leading"


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "ddim"])
def test_eta_is_refused_by_every_sampler_but_ddim(name):
    sampler = make_sampler(name, SD_SCHEDULER)
    with pytest.raises(UserError, match=f"eta is a DDIM option; got eta=0.5 with sampler '{name}'"):
        sampler.start(10, eta=0.5)
    assert len(sampler.start(10, eta=0.0).timesteps) >= 10


def test_ddim_takes_eta_and_refuses_a_negative_one():
    sampler = make_sampler("ddim", SD_SCHEDULER)
    assert len(sampler.start(10, eta=1.0).timesteps) == 10
    with pytest.raises(UserError, match="bad eta; got -0.5"):
        sampler.start(10, eta=-0.5)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_steps_are_taken_in_order_once_each(name):
    run = make_sampler(name, SD_SCHEDULER).start(4)
    x = np.zeros(SHAPE, np.float32)
    generator = TorchCompatGenerator(0)
    with pytest.raises(ValueError, match="in order"):
        run.step(x, 1, x, generator)
    for i in range(len(run.timesteps)):
        x = run.step(np.ones(SHAPE, np.float32), i, run.scale_model_input(x, i), generator)
        assert x.dtype == np.float32 and x.shape == SHAPE
    with pytest.raises(ValueError, match="in order"):
        run.step(x, len(run.timesteps), x, generator)


def test_pndm_calls_the_unet_once_per_step_plus_the_warm_up():
    # PRK: three steps of four calls, then one call per step; PLMS only: the first step twice.
    assert len(PNDMSampler.from_scheduler_config({}).start(10).timesteps) == 3 * 4 + (10 - 3)
    assert len(PNDMSampler.from_scheduler_config({"skip_prk_steps": True}).start(10).timesteps) == 10 + 1
    assert len(PNDMSampler.from_scheduler_config({"skip_prk_steps": True}).start(1).timesteps) == 1
    with pytest.raises(UserError, match="needs at least 4 steps; got 3"):
        PNDMSampler.from_scheduler_config({}).start(3)


def test_dpm_solver_karras_timesteps_descend_from_the_top():
    run = DPMSolverSampler.from_scheduler_config({**SD_SCHEDULER, "use_karras_sigmas": True}).start(20)
    assert run.timesteps.dtype == np.int64 and run.timesteps[0] == 999 and np.all(np.diff(run.timesteps) <= 0)
    assert run.sigmas[-1] == 0 and np.all(np.diff(run.sigmas) < 0)
