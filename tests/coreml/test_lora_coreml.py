"""LoRA on Core ML: merged at build (the fused torch modules go to the converter), checked against diffusers'
pipeline with the LoRA loaded and fused; adapter packs refused in one line, on both sides."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ldm_export.build import BuildConfig, build
from ldm_runtime.bundle import open_bundle
from ldm_runtime.pipeline import Components, Pipeline
from tests.export.lora_oracle import diffusers_fused, diffusers_image, diffusers_pipe, max_diff, runtime_image
from tests.models.lora import make_lora


@pytest.fixture(scope="module")
def coreml_lora(tiny_sd, tmp_path_factory):
    root = tmp_path_factory.mktemp("coreml-lora")
    lora = make_lora(tiny_sd, root / "unet.safetensors", seed=1)
    out = root / "b"
    build(BuildConfig(model=tiny_sd, out=out, target="coreml", resolutions=((32, 32),), loras=((lora.path, 1.0),)))
    return out, lora


def test_coreml_build_merges_the_lora(coreml_lora, tiny_sd):
    bundle, lora = coreml_lora
    b = open_bundle(bundle)
    assert b.manifest["adapters"][0]["file"] == lora.path.name
    got = runtime_image(Pipeline(b, Components(b, backend="coreml-reference")))
    oracle = diffusers_image(diffusers_fused(tiny_sd, [(lora.path, 1.0)]))
    base = diffusers_image(diffusers_pipe(tiny_sd))
    # fp16 programs: the fused model's image within the fp16 image tolerance, far from the base model's
    assert max_diff(got, oracle) <= 8 and max_diff(got, base) > 10


def test_a_pack_on_a_coreml_bundle_is_refused_in_one_line(coreml_lora, tiny_sd, tmp_path):
    bundle, lora = coreml_lora
    made = subprocess.run([sys.executable, "-m", "ldm_export.cli", "adapter", str(bundle), "-r", str(tiny_sd),
                           "--lora", str(lora.path), "--out", str(tmp_path / "pack")], capture_output=True, text=True)
    assert made.returncode == 2 and "Core ML" in made.stderr and len(made.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pack").exists()
    used = subprocess.run([sys.executable, "-m", "ldm_runtime.cli", "generate", str(bundle), "-p", "a cat",
                           "--backend", "coreml-reference", "--adapter", str(tmp_path), "--out",
                           str(tmp_path / "x.png")], capture_output=True, text=True)
    lines = used.stderr.strip().splitlines()
    assert used.returncode == 2 and len(lines) == 1 and "Core ML bundles take LoRA adapters at build" in lines[0]
