"""On the demo model, a LoRA trained here to draw red shapes blue shifts what the adherence checker sees, merged
at build (``build --lora``) and swapped on the device (``--adapter``)."""

from __future__ import annotations

import pytest

from ldm_export.adapter_pack import write_pack
from ldm_export.build import BuildConfig, build
from ldm_export.demo import GUIDANCE, MODEL_DIR
from ldm_runtime.bundle import open_bundle
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.request import Request
from tests.demo.lora_colour import PROMPTS, blue_fraction, train_colour_lora

pytestmark = pytest.mark.slow   # training and two builds: a few minutes on a CPU


def _images(bundle, adapters=()):
    b = open_bundle(bundle)
    pipe = Pipeline(b, Components(b))
    if adapters:
        pipe.components.apply_adapters(list(adapters))
    return [pipe.generate(Request(prompt=p, seed=s, steps=20, guidance_scale=GUIDANCE, sampler="ddim")).image
            for p in PROMPTS[::2] for s in (0, 1)]


def test_colour_lora_shifts_red_to_blue_merged_and_swapped(tmp_path):
    lora = train_colour_lora(tmp_path / "colour.safetensors")
    build(BuildConfig(model=MODEL_DIR, out=tmp_path / "base"))
    build(BuildConfig(model=MODEL_DIR, out=tmp_path / "merged", loras=((lora, 1.0),)))
    write_pack(tmp_path / "base", MODEL_DIR, lora, tmp_path / "pack")
    base_blue, base_red = blue_fraction(_images(tmp_path / "base"))
    merged_blue, merged_red = blue_fraction(_images(tmp_path / "merged"))
    swapped_blue, swapped_red = blue_fraction(_images(tmp_path / "base", [(tmp_path / "pack", 1.0)]))
    print(f"blue / red largest blobs: base {base_blue:.2f}/{base_red:.2f}, merged {merged_blue:.2f}/"
          f"{merged_red:.2f}, swapped {swapped_blue:.2f}/{swapped_red:.2f}")
    assert base_red >= 0.5 and base_blue <= 0.2          # the demo model draws red when asked
    for blue, red in ((merged_blue, merged_red), (swapped_blue, swapped_red)):
        assert blue >= base_blue + 0.3 and red <= base_red - 0.3
