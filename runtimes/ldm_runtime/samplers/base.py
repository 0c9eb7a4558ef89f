"""The one small interface every sampler has, and the scheduler-config keys they all read.

A :class:`Sampler` is built from a diffusers ``scheduler_config.json`` dict, the way
``XScheduler.from_config`` builds a scheduler: keys it does not read are ignored,
missing ones take that scheduler's defaults. ``start(n)`` returns a
:class:`SamplerRun`, the state of one sampling run (multistep history lives there),
which the pipeline drives as diffusers' pipelines drive a scheduler::

    run = sampler.start(num_inference_steps)
    x = generator.randn(shape) * run.init_noise_sigma
    for i, t in enumerate(run.timesteps):           # one entry per UNet call
        eps = unet(run.scale_model_input(x, i), t)
        x = run.step(eps, i, x, generator)          # draws noise exactly when diffusers does
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ..errors import UserError
from .schedule import BETA_SCHEDULES, TIMESTEP_SPACINGS, make_betas


def one_of(what: str, got: Any, expected: tuple, hint: str = "") -> None:
    """A UserError unless ``got`` is one of ``expected``."""
    if got not in expected:
        raise UserError(f"unsupported {what}; got {got!r}; expected one of {', '.join(map(repr, expected))}"
                        + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class SchedulerConfig:
    """The keys every diffusers scheduler here reads (its names; each subclass sets its defaults)."""

    LABEL: ClassVar[str] = "sampler"                      # for messages: "euler (EulerDiscreteScheduler)"
    PREDICTION_TYPES: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction", "sample")

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    def __post_init__(self) -> None:
        if self.trained_betas is not None:
            # A tuple keeps the frozen config hashable; the json gives a list.
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in self.trained_betas))
            if len(self.trained_betas) != self.num_train_timesteps:
                raise UserError(f"trained_betas has the wrong length; got {len(self.trained_betas)}; "
                                f"expected num_train_timesteps = {self.num_train_timesteps}")
        else:
            self.one_of("beta_schedule", BETA_SCHEDULES)
        self.one_of("timestep_spacing", TIMESTEP_SPACINGS)
        self.one_of("prediction_type", self.PREDICTION_TYPES)
        if not (isinstance(self.num_train_timesteps, int) and self.num_train_timesteps >= 1):
            raise UserError(f"bad num_train_timesteps; got {self.num_train_timesteps!r}; expected an integer >= 1")
        self._check_betas()
        self.check()

    def _check_betas(self) -> None:
        """Each β_t is a variance fraction: in [0, 1), or exactly 1 at the last step (a zero-SNR schedule); any
        other value gives a negative or NaN ᾱ, and every image NaN."""
        with np.errstate(all="ignore"):
            betas = make_betas(self).astype(np.float64)
        bad = ~np.isfinite(betas) | (betas < 0) | (betas > 1)
        bad[:-1] |= betas[:-1] >= 1
        if bad.any():
            t = int(np.flatnonzero(bad)[0])
            source = "trained_betas" if self.trained_betas is not None else \
                f"beta_schedule {self.beta_schedule!r} from beta_start {self.beta_start:g} to beta_end {self.beta_end:g}"
            raise UserError(f"the scheduler's betas must lie in [0, 1); {source} gives beta {betas[t]:g} at "
                            f"timestep {t} of {len(betas)}")

    def check(self) -> None:
        """The subclass's own checks (values it cannot reproduce are a UserError)."""

    def one_of(self, key: str, expected: tuple, hint: str = "") -> None:
        one_of(f"{key} for {self.LABEL}", getattr(self, key), expected, hint)

    def refuse_unless(self, key: str, supported: Any, hint: str) -> None:
        """A UserError when ``key`` is set to anything but ``supported`` (an option not implemented)."""
        got = getattr(self, key)
        if got != supported:
            raise UserError(f"unsupported {key} for {self.LABEL}; got {got!r}; expected {supported!r}; {hint}")

    @classmethod
    def from_scheduler_config(cls, cfg: dict) -> "SchedulerConfig":
        """From a scheduler_config.json dict, as diffusers' ``from_config``: unknown keys are ignored, and so
        are the keys ``_use_default_values`` lists (the source scheduler's defaults, not the user's choice)."""
        defaults = set(cfg.get("_use_default_values", ()))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known and k not in defaults})


def check_num_inference_steps(num_inference_steps: int, num_train_timesteps: int) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
            or not 1 <= num_inference_steps <= num_train_timesteps:
        raise UserError(f"bad number of inference steps; got {num_inference_steps!r}; "
                        f"expected an integer in 1..{num_train_timesteps} (num_train_timesteps)")
    return int(num_inference_steps)


class SamplerRun(ABC):
    """One sampling run: the UNet's timesteps in call order, and the step between calls."""

    timesteps: np.ndarray        # one entry per UNet call
    init_noise_sigma: float = 1.0
    _calls: int = 0

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        """The UNet's input at call ``i`` (the identity, except for the σ-parameterised samplers)."""
        return np.asarray(sample, np.float32)

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray, generator) -> np.ndarray:
        """The sample after UNet call ``i``; calls come in order, once each, as the history depends on it."""
        if i != self._calls or i >= len(self.timesteps):
            raise ValueError(f"step {i} called after {self._calls} of {len(self.timesteps)} steps; "
                             "a run takes its steps in order, once each")
        self._calls += 1
        out = self._step(np.asarray(model_output, np.float32), i, np.asarray(sample, np.float32), generator)
        return np.asarray(out, np.float32)

    @abstractmethod
    def _step(self, model_output: np.ndarray, i: int, sample: np.ndarray, generator) -> np.ndarray: ...


class Sampler(ABC):
    """A diffusers scheduler's schedule and algorithm, in numpy; :meth:`start` gives one run."""

    name: ClassVar[str]               # "ddim" | "pndm" | "dpmpp-2m" | "euler" | "euler-a"
    diffusers_class: ClassVar[str]    # "DDIMScheduler" | …
    config_class: ClassVar[type[SchedulerConfig]]

    def __init__(self, config: SchedulerConfig):
        self.config = config

    @classmethod
    def from_scheduler_config(cls, cfg: dict) -> "Sampler":
        return cls(cls.config_class.from_scheduler_config(cfg))

    def start(self, num_inference_steps: int, *, eta: float = 0.0) -> SamplerRun:
        """A fresh run of ``num_inference_steps`` (``eta``: DDIM's η; the others refuse η ≠ 0)."""
        n = check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
        self.check_eta(eta)
        return self._start(n, float(eta))

    def check_eta(self, eta: float) -> None:
        if eta != 0:
            raise UserError(f"eta is a DDIM option; got eta={eta} with sampler {self.name!r}; expected 0; "
                            "leave --eta out or use --sampler ddim")

    @abstractmethod
    def _start(self, num_inference_steps: int, eta: float) -> SamplerRun: ...
