"""What produced a bundle or a calibration set: the tool and the library versions its numbers depend on."""

from __future__ import annotations

import platform

from . import __version__


def producer() -> dict:
    import diffusers
    import numpy
    import torch

    return {"name": "ldm-export", "version": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": numpy.__version__}
