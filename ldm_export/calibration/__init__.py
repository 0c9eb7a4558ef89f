"""Calibration sets: the inputs each component really sees along DDIM trajectories, for quantization.

:func:`collect` writes one (``ldm-export calibrate``); :meth:`CalibrationSet.open` reads and
validates one. See docs/calibration.md.
"""

from .collect import collect, stratified_steps, summary_line
from .format import FORMAT, FORMAT_VERSION, MANIFEST
from .prompt_sets import (
           AUTO,
           BUILTIN,
           PromptSet,
           default_guidance,
           load_prompts,
           resolve_spec,
           shapes_prompts,
)
from .reader import CalibrationSet

__all__ = ["AUTO", "BUILTIN", "FORMAT", "FORMAT_VERSION", "MANIFEST", "CalibrationSet", "PromptSet", "collect",
           "default_guidance", "load_prompts", "resolve_spec", "shapes_prompts", "stratified_steps", "summary_line"]
