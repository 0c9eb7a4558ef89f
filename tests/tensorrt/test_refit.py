"""Adapter packs on TensorRT: refittable engines refitted in place (trt.Refitter) from base + deltas, never
rebuilt; a non-refittable engine refused in one line naming --refittable. Needs TensorRT and a GPU (marked
``gpu``: skipped elsewhere with the reason)."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_runtime.bundle import open_bundle
from ldm_runtime.errors import UserError
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.runners import RunnerOptions
from ldm_runtime.tensorrt.builder import BuildOptions
from ldm_runtime.tensorrt.prepare import prepare_bundle
from tests.export.lora_oracle import max_diff, runtime_image
from tests.models.lora import TEXT_ATTENTION, make_lora
from tests.tensorrt.conftest import build_tiny

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def trt_bundle(tiny_sd, tmp_path_factory):
    from ldm_export.adapter_pack import write_pack

    root = tmp_path_factory.mktemp("refit")
    bundle = build_tiny(tiny_sd, None, root / "bundle", "fp32")
    packs = {}
    for name, seed, text in (("a", 1, ()), ("b", 5, TEXT_ATTENTION)):
        lora = make_lora(tiny_sd, root / f"{name}.safetensors", seed=seed, text_targets=text)
        write_pack(bundle, tiny_sd, lora.path, root / f"pack_{name}")
        packs[name] = root / f"pack_{name}"
    return bundle, packs


def _pipe(bundle, backend):
    b = open_bundle(bundle)
    return Pipeline(b, Components(b, backend=backend, options=RunnerOptions()))


def test_refit_matches_onnx_runtime_and_a_b_a_is_bit_identical(trt_bundle):
    bundle, packs = trt_bundle
    prepare_bundle(bundle, BuildOptions(refit="all"), force=True, report=print)
    trt, ort = _pipe(bundle, "tensorrt"), _pipe(bundle, "onnxruntime")
    base = runtime_image(trt)
    for pipe in (trt, ort):
        pipe.components.apply_adapters([(packs["a"], 1.0)])
    a = runtime_image(trt)
    assert max_diff(a, runtime_image(ort)) <= 2 and max_diff(a, base) > 2
    trt.components.apply_adapters([(packs["b"], 1.0)])
    trt.components.apply_adapters([(packs["a"], 1.0)])
    assert np.array_equal(runtime_image(trt), a)
    trt.components.apply_adapters([])
    assert np.array_equal(runtime_image(trt), base)


def test_non_refittable_engine_is_refused_naming_the_flag(trt_bundle):
    bundle, packs = trt_bundle
    prepare_bundle(bundle, BuildOptions(refit="none"), force=True, report=print)
    pipe = _pipe(bundle, "tensorrt")
    pipe.components.apply_adapters([(packs["a"], 1.0)])
    with pytest.raises(UserError, match="--refittable"):
        runtime_image(pipe)
