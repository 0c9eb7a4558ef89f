"""Importing coremltools on the deploy side, without letting it import torch.

coremltools imports torch (and torchvision, torchaudio, executorch, torchao), transformers and tensorflow at
import time when they are installed, to offer its converters. The runtime only reads programs (and, on macOS,
predicts), and it never imports torch, diffusers or transformers, so the first import of coremltools here
hides those packages: coremltools sees them as absent, as it would on a deploy machine. A process that already imported coremltools (a build that
converts, then checks) keeps its own. The cost: in a process whose first coremltools import came from here,
coremltools cannot convert torch models afterwards; ``ldm-run`` never does.
"""

from __future__ import annotations

import importlib
import logging
import sys

from ..errors import BackendUnavailable

HIDDEN = ("torch", "torchvision", "torchaudio", "executorch", "torchao", "transformers", "diffusers", "tensorflow")


def import_coremltools(what: str):
    """``coremltools``; :class:`BackendUnavailable` naming ``what`` (the backend) when it is not installed."""
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    hidden = [m for m in HIDDEN if m not in sys.modules]
    for m in hidden:
        sys.modules[m] = None  # "import torch" raises ImportError while this is set
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its import notices: untested versions, no Core ML runtime off macOS
    try:
        return importlib.import_module("coremltools")
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] == "coremltools":
            raise BackendUnavailable(f"{what} (package 'coremltools')", "coremltools") from e
        raise
    finally:
        logger.setLevel(level)
        for m in hidden:
            if sys.modules.get(m, ...) is None:
                del sys.modules[m]
