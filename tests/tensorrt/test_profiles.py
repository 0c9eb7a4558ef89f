"""Optimization profiles cover every shape the runtime feeds each component: every declared size,
with and without classifier-free guidance. The oracle is the runtime pipeline itself (ONNX Runtime
on the same bundle), recording the shapes it passes to each component."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ldm_runtime.bundle import open_bundle
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.tensorrt.profiles import bundle_profiles, check_shape, contains
from ldm_runtime.errors import UserError
from ldm_runtime.request import Request
from ldm_runtime.runners import RunnerOptions
from ldm_runtime.verify import load_golden
from dataclasses import replace


class RecordingComponents(Components):
    """The real components (ONNX Runtime), noting every input shape they are given."""

    def __init__(self, bundle):
        super().__init__(bundle, backend="onnxruntime", options=RunnerOptions(provider="cpu"))
        self.shapes: list[tuple[str, str, tuple[int, ...]]] = []

    def run(self, runner, feeds, where=""):
        self.shapes += [(runner.name, k, tuple(v.shape)) for k, v in feeds.items()]
        return super().run(runner, feeds, where)


def _requests(bundle):
    """The golden request, at every declared size where the family takes no input image, with the
    bundle's guidance and with guidance 1 (no guided pair)."""
    base = replace(Request.from_manifest(bundle.manifest["golden"], load_golden(bundle)), steps=1)
    sizes = [tuple(s) for s in bundle.manifest["resolution"]["declared"]] if base.image is None else [
        (base.width, base.height)]
    for w, h in sizes:
        for scale in (base.guidance_scale, 1.0):
            yield replace(base, width=w, height=h, guidance_scale=scale)


def _fed_shapes(bundle_dir):
    bundle = open_bundle(bundle_dir)
    components = RecordingComponents(bundle)
    pipeline = Pipeline(bundle, components)
    try:
        for request in _requests(bundle):
            pipeline.generate(request)
    finally:
        components.release_all()
    golden = load_golden(bundle)  # verify feeds these too
    extra = [(k.split("/")[0], k.split("/")[2], tuple(v.shape)) for k, v in golden.items() if "/in/" in k]
    return bundle.manifest, components.shapes + extra


def test_profiles_cover_every_fed_shape_of_every_family(family_bundles):
    batches_seen = set()
    for name, bundle_dir in family_bundles.items():
        manifest, fed = _fed_shapes(bundle_dir)
        profiles = bundle_profiles(manifest)
        assert set(profiles) == set(manifest["components"])
        for component, tensor, shape in fed:
            (profile,) = profiles[component]
            assert contains(profile, tensor, shape), (name, component, tensor, shape, profile[tensor])
            if component == "unet":
                batches_seen.add(shape[0])
    assert batches_seen == {1, 2}   # the guided pair and the single row were both fed


def test_every_declared_size_and_both_batches_inside_the_unet_and_decoder_profiles(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    f = m["latent"]["downsample_factor"]
    unet, dec = bundle_profiles(m)["unet"][0], bundle_profiles(m)["vae_decoder"][0]
    for w, h in m["resolution"]["declared"]:
        for batch in (1, 2):
            assert contains(unet, "sample", (batch, 4, h // f, w // f))
        assert contains(dec, "latent", (1, 4, h // f, w // f))
    assert unet["sample"]["opt"][0] == 2 and dec["latent"]["max"][0] == 1   # tuned for the guided pair
    assert not contains(unet, "sample", (3, 4, 16, 16))                      # batch 3 is outside


def test_a_shape_outside_the_profile_is_one_line(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    profile = bundle_profiles(m)["unet"][0]
    with pytest.raises(UserError, match=r"outside the engine's profile .*ldm-run prepare") as e:
        check_shape("unet", profile, "sample", (1, 4, 64, 64))
    assert "\n" not in str(e.value)


def test_unguided_families_get_batch_one_only(family_bundles):
    m = open_bundle(family_bundles["uncond-kl"]).manifest
    assert m["guidance"]["rule"] == "never"
    profile = bundle_profiles(m)["unet"][0]
    assert profile["sample"]["min"][0] == profile["sample"]["max"][0] == 1
    assert np.all(np.array(profile["sample"]["min"]) <= np.array(profile["sample"]["max"]))
