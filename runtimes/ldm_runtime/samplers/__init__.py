"""The samplers of the runtime, each a numpy port of one diffusers scheduler (see :mod:`.base`).

========  ==================================  =========================================
name      diffusers class                     algorithm
========  ==================================  =========================================
ddim      DDIMScheduler                       Song et al. 2020 (η ≥ 0)
pndm      PNDMScheduler                       Liu et al. 2022, PRK warm-up + PLMS
dpmpp-2m  DPMSolverMultistepScheduler         Lu et al. 2022, DPM-Solver++ (1-3M)
euler     EulerDiscreteScheduler              Karras et al. 2022, Algorithm 2
euler-a   EulerAncestralDiscreteScheduler     Euler with ancestral noise
========  ==================================  =========================================
"""

from __future__ import annotations

from ..errors import UserError
from .base import Sampler, SamplerRun
from .ddim import DDIMConfig, DDIMSampler, ddim_step
from .dpm_solver import DPMSolverSampler
from .euler import EulerSampler
from .euler_ancestral import EulerAncestralSampler
from .guidance import guidance
from .pndm import PNDMSampler

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls for cls in (DDIMSampler, PNDMSampler, DPMSolverSampler, EulerSampler, EulerAncestralSampler)
}
BY_DIFFUSERS_CLASS: dict[str, type[Sampler]] = {cls.diffusers_class: cls for cls in SAMPLERS.values()}


def make_sampler(name: str | None, scheduler_config: dict, scheduler_class: str | None = None) -> Sampler:
    """The sampler ``name`` built from a diffusers scheduler config; ``name=None``: the sampler of
    ``scheduler_class`` (the bundle's diffusers scheduler) when it is one of ours, else DDIM."""
    if name is None:
        cls = BY_DIFFUSERS_CLASS.get(scheduler_class, DDIMSampler)
    elif name in SAMPLERS:
        cls = SAMPLERS[name]
    else:
        raise UserError(f"unknown sampler; got {name!r}; expected one of {', '.join(SAMPLERS)}")
    return cls.from_scheduler_config(scheduler_config)


__all__ = ["SAMPLERS", "DDIMConfig", "DDIMSampler", "Sampler", "SamplerRun", "ddim_step", "guidance",
           "make_sampler"]
