"""Fixtures of the TensorRT tests: tiny bundles, device descriptions as plain data, and the gpu skip.

Nothing here imitates TensorRT: the tests that need it are marked ``gpu`` and skip, with the reason,
unless TensorRT's Python package and a GPU are both present.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ldm_runtime.tensorrt.device import DeviceDescription
from tests.conftest import TINY_SIZES

ORIN_8GB = DeviceDescription("Orin", "8.7", 7_600_000_000, True, "10.3.0.30", "12.6", "12.6")
RTX_4090 = DeviceDescription("NVIDIA GeForce RTX 4090", "8.9", 25_393_692_672, False, "10.3.0.26", "12.5", "12.6")


def gpu_unavailable() -> str | None:
    """Why the gpu tests cannot run here (None when TensorRT and a GPU are both present)."""
    from ldm_export.targets.tensorrt.engines import unavailable_reason

    return unavailable_reason()


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if "gpu" in item.keywords:
            reason = reason or gpu_unavailable()
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"needs TensorRT and an NVIDIA GPU: {reason}"))


@pytest.fixture(scope="session")
def tiny_calibration(tiny_sd, tmp_path_factory) -> Path:
    """A small calibration set of ``tiny_sd`` (2 trajectories of 2 steps)."""
    from ldm_export.calibration import collect

    out = tmp_path_factory.mktemp("trt-calib") / "c"
    collect(tiny_sd, out, prompts="general", steps=2, samples=2, seed=0, per_trajectory=1)
    return out


def build_tiny(tiny_sd, calibration, out: Path, precision: str) -> Path:
    """A ``--target tensorrt`` bundle of ``tiny_sd`` (the build checks every graph against TensorRT 10.3's
    ONNX parser, and every Q/DQ against explicit quantization)."""
    from ldm_export.build import BuildConfig, build
    from ldm_export.golden import GOLDEN

    build(BuildConfig(model=tiny_sd, out=out, resolutions=TINY_SIZES, precision=precision, target="tensorrt",
                      calibration=calibration if precision != "fp32" else None, golden=replace(GOLDEN, steps=2)))
    return out


@pytest.fixture(scope="session")
def tiny_int8_bundle(tiny_sd, tiny_calibration, tmp_path_factory) -> Path:
    """An int8 bundle of ``tiny_sd`` (int8-static UNet in the tensorrt layout, weight-only text encoder)."""
    return build_tiny(tiny_sd, tiny_calibration, tmp_path_factory.mktemp("trt-int8") / "b", "int8")


FAMILY_MODELS = ("tiny-sd",)   # + tests.models.FAMILIES, added below


@pytest.fixture(scope="session")
def family_bundles(tmp_path_factory) -> dict[str, Path]:
    """An fp32 ``--target tensorrt`` bundle of every tiny model of the registry's FAMILIES and of tiny-sd, at its
    test sizes."""
    from ldm_export.build import BuildConfig, build
    from ldm_export.golden import GOLDEN
    from tests.models import FAMILIES, MODELS, make

    root = tmp_path_factory.mktemp("trt-families")
    out = {}
    for name in FAMILY_MODELS + FAMILIES:
        model = make(name, root / name / "model")
        out[name] = root / name / "bundle"
        build(BuildConfig(model=model, out=out[name], resolutions=MODELS[name].sizes, target="tensorrt",
                          golden=replace(GOLDEN, steps=2)))
    return out
