"""Every family of the paper: build → ldm-run generate → parity against the torch reference.

Tiny random-weight models mirror the original configs (see ldm_export/random_families.py);
fp32 final images must agree within 2 uint8 levels.
"""

from __future__ import annotations

import pytest

from ldm_export import random_families as rf
from ldm_export.build import BuildConfig, build
from ldm_export.parity import ParityConfig, format_parity, run_parity
from ldm_runtime.bundle import open_bundle
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.verify import format_report, verify_bundle

FAMILIES = {
    # name: (builder, family, autoencoder, sizes)
    "uncond-vq": (rf.make_tiny_ldm_uncond_vq, "unconditional", "vq", ((32, 32),)),
    "uncond-kl": (rf.make_tiny_ldm_uncond_kl, "unconditional", "kl", ((128, 128),)),
    "class-unet": (rf.make_tiny_class_conditional, "class-conditional", "vq", ((32, 32),)),
    "class-context": (rf.make_tiny_class_conditional_crossattn, "class-conditional", "vq", ((32, 32),)),
    "ldmbert": (rf.make_tiny_ldm_text2img, "text-to-image", "kl", ((64, 64),)),
    "superres": (rf.make_tiny_superres, "super-resolution", "vq", ((128, 128),)),
    "inpainting": (rf.make_tiny_inpainting, "inpainting", "kl", ((32, 32),)),
    "sd-v": (rf.make_tiny_sd_v, "text-to-image", "kl", ((32, 32),)),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_bundle(request, tmp_path_factory):
    builder, family, ae, sizes = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = builder(root / "model")
    build(BuildConfig(model=model, out=root / "bundle", resolutions=sizes))
    return request.param, model, root / "bundle"


def test_manifest_describes_the_family(family_bundle):
    name, _, bundle = family_bundle
    _, family, ae, _ = FAMILIES[name]
    m = open_bundle(bundle).manifest
    assert (m["family"], m["autoencoder"]["kind"]) == (family, ae)


def test_verify_passes(family_bundle):
    _, _, bundle = family_bundle
    b = open_bundle(bundle)
    report = verify_bundle(Pipeline(b, Components(b)))
    assert report.ok, format_report(report)


def test_parity_with_torch_reference(family_bundle):
    """eta 0.5 over 10 steps (verify already replays an eta-0 trajectory of the same reference)."""
    name, model, bundle = family_bundle
    report = run_parity(ParityConfig(bundle=bundle, reference=model, prompts=("a red circle on the left",),
                                     seeds=(0,), class_labels=(3,), steps=10, eta=0.5))
    assert report.ok, format_parity(report)
    assert all(c["image_max_abs"] <= 2 for c in report.cases)
