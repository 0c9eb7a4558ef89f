"""Custom modules from factories: build → verify → parity against the project's own torch loop."""

from __future__ import annotations

import json

import pytest

from ldm_export.build import BuildConfig, build
from ldm_export.loading import load_model
from ldm_export.parity import ParitySweep, format_parity, run_parity
from ldm_runtime.request import Request
from tests.models.sd import TINY_SCHEDULER, write_clip_tokenizer
from ldm_runtime.bundle import open_bundle
from ldm_runtime.errors import UserError
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.verify import format_report, verify_bundle

M = "tests.export.custom_nets"


def _describe(tmp_path, **over):
    write_clip_tokenizer(tmp_path / "tokenizer", model_max_length=16)
    desc = {"unet": f"{M}:make_unet", "decoder": f"{M}:make_decoder", "encoder": f"{M}:make_encoder",
            "text_encoder": f"{M}:make_text_encoder", "tokenizer": "tokenizer", "scheduler": TINY_SCHEDULER,
            "latent_channels": 4, "downsample_factor": 2, "scaling_factor": 0.5, "unet_downsampling": 2,
            "sample_size": 16, "max_length": 16, **over}
    path = tmp_path / "model.json"
    path.write_text(json.dumps({k: v for k, v in desc.items() if v is not None}))
    return path


def test_custom_model_builds_verifies_and_matches_torch(tmp_path):
    desc = _describe(tmp_path)
    bundle = tmp_path / "bundle"
    m = build(BuildConfig(model=desc, out=bundle, resolutions=((32, 32),)))
    assert m["source"]["format"] == "custom" and m["family"] == "text-to-image"
    assert set(m["components"]) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    b = open_bundle(bundle)
    report = verify_bundle(Pipeline(b, Components(b)))
    assert report.ok, format_report(report)
    parity = run_parity(ParitySweep(bundle=bundle, reference=desc, prompts=("a red circle",), seeds=(0,),
                                    base=Request(steps=8, guidance_scale=7.5, eta=0.5)))
    assert parity.ok, format_parity(parity)


def test_factory_flags_override_the_description(tmp_path):
    desc = _describe(tmp_path, unet="nope:nothing")
    model = load_model(desc, factories={"unet": f"{M}:make_unet"})
    assert type(model.modules.unet.m).__name__ == "TinyUNet"


@pytest.mark.parametrize("over, match", [
    ({"unet": "no_such_pkg.mod:make"}, "cannot import no_such_pkg.mod"),
    ({"unet": f"{M}:missing"}, "has no callable 'missing'"),
    ({"unet": f"{M}:not_a_module"}, "returned int, not a torch.nn.Module"),
    ({"unet": "no-colon"}, "not of the form package.module:function"),
    ({"scaling_factor": None}, "lacks scaling_factor"),
])
def test_bad_factories_get_one_line_errors(tmp_path, over, match):
    with pytest.raises(UserError, match=match):
        load_model(_describe(tmp_path, **over))
