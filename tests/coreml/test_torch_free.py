"""The Core ML runtime modules import, load and evaluate a program with torch, diffusers and transformers
blocked, and never import them even where they are installed."""

from __future__ import annotations

import subprocess

from tests.conftest import blocked_python

MODULES = ("ldm_runtime.runners.coreml", "ldm_runtime.runners.coreml_reference",
           "ldm_runtime.runners.coreml_reference.runner", "ldm_runtime.runners.coreml_reference.evaluate",
           "ldm_runtime.runners.coreml_reference.program", "ldm_runtime.runners.coreml_reference.ops")


def test_imports_with_torch_blocked():
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in MODULES)
    result = subprocess.run(blocked_python(code), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_evaluates_a_package_with_torch_blocked(tiny_sd_coreml):
    path, record = tiny_sd_coreml["fp16", "vae_decoder"]
    code = (f"import numpy as np\nfrom ldm_runtime.runners.coreml_reference import CoreMLReferenceRunner\n"
            f"spec = {record!r}\n"
            f"with CoreMLReferenceRunner('vae_decoder', {str(path)!r}, spec) as r:\n"
            f"    out = r.run({{'latent': np.zeros((1, 4, 16, 16), np.float32)}})['image']\n"
            f"assert out.shape == (1, 3, 32, 32) and np.isfinite(out).all()\n")
    result = subprocess.run(blocked_python(code), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_loading_does_not_import_torch_where_it_is_installed(tiny_sd_coreml):
    import sys

    path, _ = tiny_sd_coreml["fp32", "text_encoder"]
    code = (f"import sys\nfrom ldm_runtime.runners.coreml_reference.program import load_program\n"
            f"load_program({str(path)!r}, 'text_encoder')\n"
            f"leaked = [m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')]\n"
            f"assert not leaked, leaked\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
