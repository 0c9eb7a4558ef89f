"""The TensorRT path end to end, for a machine with TensorRT and an NVIDIA GPU (skipped elsewhere,
with the reason): build a bundle, prepare its engines, generate, verify against the bundle's golden
vectors, parity against diffusers, on tiny SD and the embedded demo model at fp16 and int8; and the engine
cache carried from
machine A (engines built at build time) to B (prepare reuses them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ldm_runtime.bundle import open_bundle
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.request import Request
from ldm_runtime.runners.tensorrt import TensorRTRunner
from ldm_runtime.tensorrt.cache import EngineCache
from ldm_runtime.tensorrt.prepare import prepare_bundle
from ldm_runtime.runners import RunnerOptions
from ldm_runtime.verify import format_report, golden_tensors, load_golden, verify_bundle
from tests.tensorrt.conftest import build_tiny

pytestmark = pytest.mark.gpu


def TensorRTComponents(bundle, low_memory: bool = False) -> Components:
    return Components(bundle, backend="tensorrt", options=RunnerOptions(low_memory=low_memory))


def _demo_bundle(out: Path, precision: str) -> Path:
    from ldm_export.build import BuildConfig, build
    from ldm_export.demo import MODEL_DIR

    build(BuildConfig(model=MODEL_DIR, out=out, target="tensorrt", precision=precision))
    return out


@pytest.fixture(scope="module", params=[("tiny-sd", "fp16"), ("tiny-sd", "int8"), ("demo", "fp16"),
                                        ("demo", "int8")], ids=lambda p: "-".join(p))
def prepared(request, tiny_sd, tiny_calibration, tmp_path_factory):
    model, precision = request.param
    out = tmp_path_factory.mktemp(f"gpu-{model}-{precision}") / "bundle"
    bundle = build_tiny(tiny_sd, tiny_calibration, out, precision) if model == "tiny-sd" else \
        _demo_bundle(out, precision)
    done = prepare_bundle(bundle, report=print)
    from ldm_export.demo import MODEL_DIR

    return bundle, done, tiny_sd if model == "tiny-sd" else MODEL_DIR


def test_prepare_builds_one_engine_per_component(prepared):
    """On a GPU machine the build already shipped this device's engines: prepare reuses exactly those (and
    builds any it lacks); a second prepare reuses everything; --force rebuilds and the bundle still opens."""
    bundle, done, _ = prepared
    manifest = json.loads((bundle / "manifest.json").read_text())
    shipped = {e["component"]: e["key"] for e in manifest["device_constraints"]["tensorrt"]["engines"]}
    assert sorted(d.component for d in done) == sorted(manifest["components"])
    for d in done:
        assert d.reused == (d.component in shipped) and shipped.get(d.component, d.key) == d.key
    again = prepare_bundle(bundle, report=print)
    assert all(d.reused for d in again) and [d.key for d in again] == [d.key for d in done]
    forced = prepare_bundle(bundle, force=True, report=print)
    assert not any(d.reused for d in forced) and [d.key for d in forced] == [d.key for d in done]
    open_bundle(bundle)   # the rewritten engines are the device cache, not sealed bundle files


@pytest.mark.parametrize("low_memory", [False, True], ids=["resident", "low-memory"])
def test_generate_and_verify_on_tensorrt(prepared, low_memory):
    bundle_dir, _, _ = prepared
    b = open_bundle(bundle_dir)
    pipeline = Pipeline(b, TensorRTComponents(b, low_memory=low_memory))
    try:
        report = verify_bundle(pipeline)
        assert report.ok, format_report(report)
        w, h = b.manifest["resolution"]["default"]
        result = pipeline.generate(Request(prompt="a red circle", steps=4, seed=1))
        assert result.image.shape == (h, w, 3) and result.image.dtype == np.uint8
    finally:
        pipeline.components.release_all()


def test_parity_against_diffusers_on_tensorrt(prepared):
    """ldm-export parity --backend tensorrt: the engines' images against diffusers' pipeline in torch,
    judged by the precision's tables and quality target (ldm_runtime.tolerances)."""
    from ldm_export.parity import ParitySweep, format_parity, run_parity

    bundle, _, reference = prepared
    report = run_parity(ParitySweep(bundle=bundle, reference=reference, backend="tensorrt",
                                    prompts=("a red circle on the left",), seeds=(0,),
                                    base=Request(steps=10, guidance_scale=1.5)))
    assert report.ok, format_parity(report)


def test_engine_cache_carries_from_machine_a_to_b(tiny_sd, tiny_calibration, tmp_path):
    """A: the build makes the engines (engines.build_engines, in its own process); B: a copy of the
    bundle on the same kind of GPU; ``prepare`` on B reuses every engine and the runner loads them."""
    from ldm_export.targets.tensorrt.engines import build_engines, device_constraints

    a = build_tiny(tiny_sd, tiny_calibration, tmp_path / "A", "fp16")
    manifest = json.loads((a / "manifest.json").read_text())
    built = build_engines(a, manifest, bundle_name=str(a), report=print)
    assert built.note is None and len(built.engines) == len(manifest["components"])
    shipped = device_constraints("10.3", built.engines)["tensorrt"]["engines"]
    assert all((a / e["file"]).is_file() for e in shipped)
    b = tmp_path / "B"
    shutil.copytree(a, b)
    done = prepare_bundle(b, report=print)
    assert all(d.reused for d in done)
    assert {e.key for e in EngineCache(b / "engines").entries()} == {e["key"] for e in shipped}
    bundle = open_bundle(b)
    golden = load_golden(bundle)
    with TensorRTRunner("unet", bundle.path("unet.onnx"), bundle.component("unet")) as unet:
        out = unet.run(golden_tensors(golden, "unet", "in"))["model_output"]
    expected = golden["unet/out/model_output"]
    assert out.shape == expected.shape and np.isfinite(out).all()
