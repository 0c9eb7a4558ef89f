"""The backend-agnostic pipeline on a real tiny bundle: sizes, guidance, batching, NaN checks, low memory."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from ldm_runtime.bundle import open_bundle
from ldm_runtime.errors import NonFiniteOutput, UserError
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.request import Request
from ldm_runtime.runners import RunnerOptions
from tests.bundle_edits import copy_bundle, edit


def _pipeline(root, low_memory=False, check_hashes=True):
    bundle = open_bundle(root, check_hashes=check_hashes)
    return Pipeline(bundle, Components(bundle, options=RunnerOptions(low_memory=low_memory)))


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return _pipeline(tiny_bundle)


@pytest.mark.parametrize("w, h", [(32, 32), (64, 48), (48, 40)])
def test_sizes_in_range(pipe, w, h):
    r = pipe.generate(Request(prompt="a red circle", steps=3, width=w, height=h))
    assert r.image.shape == (h, w, 3) and r.image.dtype == np.uint8
    assert r.decoded.shape == (1, 3, h, w)


@pytest.mark.parametrize("w, h, match", [
    (30, 32, r"30x32 is not a multiple of 4 .*try 32x32"),
    (128, 64, r"128x64 is outside the bundle's range 32x32 … 64x48; rebuild with --resolution 128x64"),
    (16, 16, "outside the bundle's range"),
])
def test_sizes_refused(pipe, w, h, match):
    with pytest.raises(UserError, match=match):
        pipe.generate(Request(prompt="x", steps=1, width=w, height=h))


def test_trace_returns_every_step_and_is_deterministic(pipe):
    cfg = Request(prompt="a blue square", steps=4, seed=7)
    a, b = pipe.generate(cfg, trace=True), pipe.generate(cfg, trace=True)
    assert len(a.latents) == 4 and list(a.timesteps) == [751, 501, 251, 1]
    assert all(np.array_equal(x, y) for x, y in zip(a.latents, b.latents))
    assert not np.array_equal(a.latents[0], pipe.generate(Request(prompt="a blue square", steps=4, seed=8),
                                                          trace=True).latents[0])


def test_the_sampler_defaults_to_the_bundles_scheduler_class(tiny_bundle, tmp_path):
    """No Request.sampler: the manifest's scheduler_class when the runtime has it, else DDIM."""
    assert open_bundle(tiny_bundle).manifest["scheduler_class"] == "DDIMScheduler"
    root = copy_bundle(tiny_bundle, tmp_path / "b")
    edit(root, lambda m: m.update(scheduler_class="EulerDiscreteScheduler"))
    p = _pipeline(root)
    cfg = Request(prompt="a cat", steps=3, seed=1)
    euler = p.generate(cfg, trace=True)
    assert euler.timesteps.dtype == np.float32 and len(euler.latents) == 3
    np.testing.assert_array_equal(euler.decoded, p.generate(replace(cfg, sampler="euler")).decoded)
    ddim = _pipeline(tiny_bundle).generate(cfg, trace=True)
    assert list(ddim.timesteps) == [667, 334, 1]  # DDIM's leading spacing, T // 3 apart, offset 1
    assert not np.allclose(ddim.decoded, euler.decoded)
    edit(root, lambda m: m.update(scheduler_class="LMSDiscreteScheduler"))  # one the runtime does not have: DDIM
    np.testing.assert_array_equal(_pipeline(root).generate(cfg).decoded, _pipeline(tiny_bundle).generate(cfg).decoded)


def test_timings_and_overhead(pipe):
    r = pipe.generate(Request(prompt="x", steps=2))
    assert set(r.seconds) == {"text_encoder", "unet", "vae_decoder", "total"}
    assert 0 <= r.overhead_seconds < r.seconds["total"]


def test_the_bundles_default_guidance_scale_applies_when_none_is_given(tiny_bundle, tmp_path):
    """Request without a scale (ldm-run generate without --guidance) uses the manifest's default_scale."""
    assert open_bundle(tiny_bundle).manifest["guidance"]["default_scale"] == 7.5  # a model other than the demo
    root = copy_bundle(tiny_bundle, tmp_path / "b")
    edit(root, lambda m: m["guidance"].update(default_scale=2.0))
    p = _pipeline(root)
    got = p.generate(Request(prompt="a cat", steps=2)).decoded
    np.testing.assert_array_equal(got, p.generate(Request(prompt="a cat", steps=2, guidance_scale=2.0)).decoded)
    assert not np.allclose(got, p.generate(Request(prompt="a cat", steps=2, guidance_scale=7.5)).decoded)


def test_guidance_off_uses_batch_of_one(pipe):
    """guidance ≤ 1 skips the unconditional half (as diffusers), so the result differs from guidance 7.5."""
    a = pipe.generate(Request(prompt="a cat", steps=2, guidance_scale=1.0), trace=True)
    b = pipe.generate(Request(prompt="a cat", steps=2, guidance_scale=7.5), trace=True)
    assert not np.allclose(a.latents[-1], b.latents[-1])


def test_fixed_batch_one_components_run_twice_per_step(tiny_bundle, tmp_path, pipe):
    """A UNet/text encoder with a static batch of 1 runs guidance as two calls, with the same result."""
    root = copy_bundle(tiny_bundle, tmp_path / "b")

    def batch_of_one(m):
        for name in ("text_encoder", "unet"):
            for spec in m["components"][name]["inputs"].values():
                spec["shape"][0] = 1
    edit(root, batch_of_one)
    fixed = _pipeline(root)
    cfg = Request(prompt="a red circle", steps=3, seed=1)
    a, b = fixed.generate(cfg, trace=True), pipe.generate(cfg, trace=True)
    np.testing.assert_allclose(a.latents[-1], b.latents[-1], rtol=1e-5, atol=1e-6)
    assert fixed.components.runner("unet").fixed_batch() == 1


def test_low_memory_keeps_one_component_resident(tiny_bundle, pipe):
    low = _pipeline(tiny_bundle, low_memory=True)
    low.components.load_all()
    assert not any(low.components.runner(n).is_loaded for n in ("text_encoder", "unet", "vae_decoder"))
    seen = []
    orig_load = type(low.components.runner("unet")).load

    def spy(self):
        seen.append((self.name, sorted(n for n in ("text_encoder", "unet", "vae_decoder")
                                       if low.components.runner(n).is_loaded)))
        return orig_load(self)

    type(low.components.runner("unet")).load = spy
    try:
        cfg = Request(prompt="a red circle", steps=2)
        r = low.generate(cfg)
    finally:
        type(low.components.runner("unet")).load = orig_load
    assert [s[0] for s in seen] == ["text_encoder", "unet", "vae_decoder"]
    assert all(resident == [] for _, resident in seen), "nothing else may be resident when a stage loads"
    np.testing.assert_array_equal(r.image, pipe.generate(cfg).image)


def test_nan_output_names_component_and_stage(tiny_bundle, runtime_fixtures, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    shutil.copy(runtime_fixtures / "nan_decoder.onnx", root / "vae_decoder.onnx")  # always NaN
    p = _pipeline(root, check_hashes=False)
    with pytest.raises(NonFiniteOutput, match=r"vae_decoder produced \d+ NaN/Inf values in 'image' at decoding"):
        p.generate(Request(prompt="x", steps=1))


def test_nan_in_unet_names_the_step(tiny_bundle, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    p = _pipeline(root)
    real = p.components.runner("unet")
    calls = []

    class NaNOnSecond(type(real)):
        def _run(self, feeds):
            out = super()._run(feeds)
            calls.append(1)
            if len(calls) == 2:
                out["model_output"] = np.full_like(out["model_output"], np.nan)
            return out

    real.__class__ = NaNOnSecond
    with pytest.raises(NonFiniteOutput, match=r"unet produced \d+ NaN/Inf values in 'model_output' at step 2/3 "
                                              r"\(t=\d+\)"):
        p.generate(Request(prompt="x", steps=3))


def test_prompt_without_text_encoder_is_refused(pipe):
    p = Pipeline.__new__(Pipeline)
    p.tokenizer = None
    with pytest.raises(UserError, match="no text encoder"):
        p.encode_prompt("x", "", True)
