"""Running a sampler and its diffusers scheduler side by side, and the grid of configurations to run.

Every step runs on diffusers' previous output, so each is compared on identical inputs, within
the bound of :mod:`tests.export.sampler_oracle`; a tap on the scheduler (``PNDMTap``,
``DPMTap``, …) computes that bound from what diffusers itself did (which call of formula (9),
which order of update, which x_θ), so the bounds do not re-implement the schedulers' logic.
"""

from __future__ import annotations

import inspect
import itertools
import warnings

import numpy as np
import pytest
import torch

from ldm_runtime.noise import TorchCompatGenerator
from ldm_runtime.samplers.euler import Churn
from tests.export import sampler_oracle as so
from tests.export.sampler_oracle import Err

SHAPE = (1, 4, 8, 8)

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
                             + [betas_name(cfg), f"n{n}"])
            cases.append(pytest.param(cfg, n, id=label))
    return cases


def betas_name(cfg: dict) -> str:
    return "trained" if "trained_betas" in cfg else cfg["beta_schedule"]


# --- running both ---------------------------------------------------------------------------------


def check_schedule(scheduler, run, n: int, exact_timesteps: bool = True) -> None:
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


def begin_at_the_first_sigma(scheduler) -> None:
    """A repeated first timestep (DPM-Solver++ with Karras σ's on the cosine schedule: 998, 998, …) makes
    diffusers start at its *second* σ (index_for_timestep) and fail with an IndexError at the end; the
    runtime starts at the first, as diffusers does when told to (set_begin_index, as img2img does)."""
    if int((scheduler.timesteps == scheduler.timesteps[0]).sum()) > 1:
        scheduler.set_begin_index(0)


def compare_steps(scheduler, run, tap, seed: int = 0, output_scale: float = 1.0, **step_kwargs) -> list[float]:
    """Step both, each step on diffusers' previous output, with model outputs ~ N(0, output_scale²);
    returns each step's bound tightness."""
    with np.errstate(all="ignore"):  # the bounds' arithmetic meets inf (log 0 at σ = 0) and 0 · inf
        return compare_steps_unchecked(scheduler, run, tap, seed, np.float32(output_scale), **step_kwargs)


def compare_steps_unchecked(scheduler, run, tap, seed: int, output_scale, **step_kwargs) -> list[float]:
    rng = np.random.default_rng(seed)
    ours, theirs = TorchCompatGenerator(seed), torch.Generator().manual_seed(seed)
    begin_at_the_first_sigma(scheduler)
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


def ends_in_nan(scheduler, n: int) -> bool:
    """Whether diffusers' run of n steps (on random model outputs) ends in NaN."""
    scheduler.set_timesteps(n)
    begin_at_the_first_sigma(scheduler)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in scheduler.timesteps:
            x = scheduler.step(torch.randn(SHAPE, generator=torch.Generator().manual_seed(int(t))), t, x).prev_sample
    return bool(torch.isnan(x).any())


def check_timesteps_from_sigmas(run, scheduler) -> None:
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
