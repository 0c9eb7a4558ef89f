"""Shared fixtures: tiny random-weight models built on the fly from the registry in tests/models (no hub access)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message=".*torchvision.*")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny Stable-Diffusion-style diffusers pipeline folder (CLIP tokenizer, KL VAE, cross-attn UNet)."""
    from tests.models import make

    return make("tiny-sd", tmp_path_factory.mktemp("models") / "tiny_sd")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A small CLIP-format tokenizer folder (vocab.json + merges.txt + configs)."""
    from tests.models.sd import write_clip_tokenizer

    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    write_clip_tokenizer(folder, model_max_length=16)
    return folder


TINY_SIZES = ((32, 32), (64, 48))


@pytest.fixture(scope="session")
def runtime_fixtures(request, tmp_path_factory) -> Path:
    """Bundles and oracle values for the runtime tests (tests/fixtures.py): prebuilt in the folder
    ``LDM_RUNTIME_FIXTURES`` names (the torch-free run), else built here from ``tiny_sd``."""
    prebuilt = os.environ.get("LDM_RUNTIME_FIXTURES")
    if prebuilt:
        return Path(prebuilt)
    from tests.fixtures import build_runtime_fixtures

    return build_runtime_fixtures(tmp_path_factory.mktemp("runtime-fixtures"), model=request.getfixturevalue("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_bundle(runtime_fixtures) -> Path:
    """An fp32 ONNX bundle of ``tiny_sd`` serving 32x32 … 64x48 (read-only: copy it to tamper)."""
    return runtime_fixtures / "tiny"


def blocked_python(code: str) -> list[str]:
    """A python command line running ``code`` where importing torch, diffusers or transformers fails."""
    import sys

    prelude = "import sys\nfor m in ('torch', 'diffusers', 'transformers'):\n    sys.modules[m] = None\n"
    return [sys.executable, "-c", prelude + code]


def ldm_run_blocked(*args: str) -> list[str]:
    """``ldm-run ARGS`` as a command line in which torch, diffusers and transformers cannot be imported."""
    return blocked_python(f"from ldm_runtime.cli import main\nmain({list(args)!r}, prog_name='ldm-run')")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for every Ray test of the session, shut down at the end: the real
    ``ray`` package, as ``--executor ray`` without ``--ray-address`` would start it."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'ldm-export[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_calibration(tiny_sd, tmp_path_factory) -> Path:
    """A small calibration set of the tiny model (4 trajectories × 4 steps)."""
    from ldm_export.calibration import collect

    out = tmp_path_factory.mktemp("calib") / "c"
    collect(tiny_sd, out, prompts="general", steps=4, samples=4, seed=0, per_trajectory=2)
    return out


@pytest.fixture(scope="session")
def tiny_quantized_bundles(tiny_sd, tiny_calibration, tiny_bundle, tmp_path_factory) -> dict[str, Path]:
    """The tiny model's fp32 bundle and its fp16 and int8 builds (4-step golden trajectory)."""
    from dataclasses import replace

    from ldm_export.build import BuildConfig, build
    from ldm_export.golden import GOLDEN

    root = tmp_path_factory.mktemp("qbundles")
    out = {"fp32": tiny_bundle}
    for precision in ("fp16", "int8"):
        out[precision] = root / precision
        build(BuildConfig(model=tiny_sd, out=out[precision], precision=precision, calibration=tiny_calibration,
                          golden=replace(GOLDEN, steps=4)))
    return out


@pytest.fixture(autouse=True, scope="session")
def _sweep_state(tmp_path_factory):
    """Parity sweeps keep their finished tasks under $LDM_EXPORT_STATE: a temporary folder in the tests."""
    os.environ["LDM_EXPORT_STATE"] = str(tmp_path_factory.mktemp("sweep-state"))
