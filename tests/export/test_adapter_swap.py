"""Adapter packs (``ldm-export adapter``) swapped into a bundle on the device (``ldm-run --adapter``), checked
against diffusers' pipeline with the same LoRA loaded and fused, and PEFT's own merge for the text encoder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ldm_export.adapter_pack import write_pack
from tests.export.lora_oracle import (diffusers_fused, diffusers_image, diffusers_pipe, max_diff, runtime_image,
                                      runtime_pipeline)
from tests.models.lora import TEXT_ATTENTION, make_lora, peft_merged


@pytest.fixture(scope="module")
def packs(tiny_sd, tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("packs")
    loras = {"a": make_lora(tiny_sd, root / "a.safetensors", seed=1),
             "b": make_lora(tiny_sd, root / "b.safetensors", seed=7, rank=2, alpha=2.0),
             "te": make_lora(tiny_sd, root / "te.safetensors", seed=3, text_targets=TEXT_ATTENTION)}
    for name, lora in loras.items():
        write_pack(tiny_bundle, tiny_sd, lora.path, root / f"pack_{name}")
    return root, loras


def test_pack_holds_factors_keyed_by_the_bundles_initializers(packs, tiny_bundle):
    from ldm_runtime.onnx_weights import initializers

    root, loras = packs
    meta = json.loads((root / "pack_te" / "adapter.json").read_text())
    graph = {c: initializers(tiny_bundle / f"{c}.onnx") for c in ("unet", "text_encoder")}
    assert {e["component"] for e in meta["entries"]} == {"unet", "text_encoder"}
    assert len(meta["entries"]) == 32 + 8
    for e in meta["entries"]:
        assert list(graph[e["component"]][e["initializer"]].shape) == e["shape"]
        assert e["transposed"]   # every attention projection is a MatMul with the weight transposed
    assert set(meta["files"]) == {"factors.npz", "golden.npz"}
    size = sum(p.stat().st_size for p in (root / "pack_te").iterdir())
    bundle_size = sum(p.stat().st_size for p in tiny_bundle.rglob("*") if p.is_file())
    assert size < bundle_size / 5   # factors, not merged weights


def test_swap_matches_diffusers_fused(packs, tiny_sd, tiny_bundle):
    root, loras = packs
    oracle = diffusers_image(diffusers_fused(tiny_sd, [(loras["a"].path, 0.8)]))
    got = runtime_image(runtime_pipeline(tiny_bundle, [(root / "pack_a", 0.8)]))
    assert max_diff(got, oracle) <= 2
    assert max_diff(got, runtime_image(runtime_pipeline(tiny_bundle))) > 10


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_swap_with_text_encoder_matches_peft_merge(packs, tiny_sd, tiny_bundle, eta):
    root, loras = packs
    pipe = diffusers_pipe(tiny_sd)
    peft_merged(pipe, loras["te"], 1.0)
    got = runtime_image(runtime_pipeline(tiny_bundle, [(root / "pack_te", 1.0)]), seed=3, eta=eta)
    assert max_diff(got, diffusers_image(pipe, seed=3, eta=eta)) <= 2


def test_two_adapters_add_like_diffusers(packs, tiny_sd, tiny_bundle):
    root, loras = packs
    oracle = diffusers_image(diffusers_fused(tiny_sd, [(loras["a"].path, 1.0), (loras["b"].path, 0.5)]))
    got = runtime_image(runtime_pipeline(tiny_bundle, [(root / "pack_a", 1.0), (root / "pack_b", 0.5)]))
    assert max_diff(got, oracle) <= 2


def test_scale_zero_and_a_b_a_are_bit_identical(packs, tiny_bundle):
    root, _ = packs
    base = runtime_image(runtime_pipeline(tiny_bundle))
    pipe = runtime_pipeline(tiny_bundle, [(root / "pack_te", 0.0)])
    assert np.array_equal(runtime_image(pipe), base)
    pipe.components.apply_adapters([(root / "pack_a", 1.0)])
    a = runtime_image(pipe)
    pipe.components.apply_adapters([(root / "pack_te", 1.0)])
    b = runtime_image(pipe)
    pipe.components.apply_adapters([(root / "pack_a", 1.0)])
    assert np.array_equal(runtime_image(pipe), a) and not np.array_equal(a, b)
    pipe.components.apply_adapters([])
    assert np.array_equal(runtime_image(pipe), base)


def _ldm_run(*args):
    return subprocess.run([sys.executable, "-m", "ldm_runtime.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_generate_and_verify_with_a_pack(packs, tiny_bundle, tmp_path):
    from tests.conftest import ldm_run_blocked

    root, _ = packs
    # where torch, diffusers and transformers cannot be imported: the swap is the runtime's own
    ok = subprocess.run(ldm_run_blocked("verify", str(tiny_bundle), "--adapter", str(root / "pack_te")),
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "PASS" in ok.stdout, ok.stdout + ok.stderr
    gen = _ldm_run("generate", tiny_bundle, "-p", "a red circle", "--steps", "4", "--width", "32", "--height", "32",
                   "--adapter", f"{root / 'pack_a'}:0.5", "--adapter", root / "pack_b", "--out", tmp_path / "x.png")
    assert gen.returncode == 0, gen.stderr
    assert (tmp_path / "x.png").is_file()


def _refused(result, text):
    lines = result.stderr.strip().splitlines()
    return result.returncode == 2 and len(lines) == 1 and text in lines[0]


def test_tampered_foreign_and_misshapen_packs_are_refused(packs, tiny_sd, tiny_bundle, tmp_path):
    from ldm_runtime.adapters import pack_seal

    root, _ = packs
    before = {p.name: p.read_bytes() for p in tiny_bundle.iterdir() if p.is_file()}
    tampered = tmp_path / "tampered"
    shutil.copytree(root / "pack_a", tampered)
    with np.load(tampered / "factors.npz") as z:
        arrays = {k: z[k] * (1.01 if i == 0 else 1) for i, k in enumerate(z.files)}
    np.savez(tampered / "factors.npz", **arrays)
    assert _refused(_ldm_run("verify", tiny_bundle, "--adapter", tampered), "was modified")
    misshapen = tmp_path / "misshapen"
    shutil.copytree(root / "pack_a", misshapen)
    meta = json.loads((misshapen / "adapter.json").read_text())
    meta["entries"][0]["rank"] = 3   # a well-sealed pack whose factors do not fit
    meta["integrity"] = pack_seal(meta)
    (misshapen / "adapter.json").write_text(json.dumps(meta))
    assert _refused(_ldm_run("verify", tiny_bundle, "--adapter", misshapen), "do not fit")
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    data = json.loads((other / "manifest.json").read_text())   # another bundle: its UNet file differs
    meta = json.loads((root / "pack_a" / "adapter.json").read_text())
    assert data["files"]["unet.onnx"] == meta["bundle"]["components"]["unet"]["unet.onnx"]
    foreign = tmp_path / "foreign"
    shutil.copytree(root / "pack_a", foreign)
    meta["bundle"]["components"]["unet"]["unet.onnx"] = "0" * 64
    meta["integrity"] = pack_seal(meta)
    (foreign / "adapter.json").write_text(json.dumps(meta))
    assert _refused(_ldm_run("verify", tiny_bundle, "--adapter", foreign), "made for another bundle")
    assert {p.name: p.read_bytes() for p in tiny_bundle.iterdir() if p.is_file()} == before


def test_unmappable_module_is_refused_by_name(packs, tiny_sd, tiny_bundle):
    """A module whose weight equals another's (the exporter shares one initializer between them)."""
    import torch

    from ldm_export.adapter_pack import map_component
    from ldm_export.loading import load_model
    from ldm_export.lora import LoraSpec, read_factors
    from ldm_runtime.errors import UserError

    _, loras = packs
    model = load_model(tiny_sd)
    factors = read_factors(model, LoraSpec(loras["a"].path))["unet"]
    attn = model.modules.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    with torch.no_grad():
        attn.to_k.weight.copy_(attn.to_v.weight)
    with pytest.raises(UserError, match=r"down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k"):
        map_component(model.modules.unet, tiny_bundle / "unet.onnx", factors, "unet")


def test_fp16_bundle_swaps_cast_weights(packs, tiny_sd, tiny_bundle, tmp_path):
    """An fp16 bundle: the pack maps to its fp16 initializers, the swapped weights are cast, and its golden
    trajectory (the bundle's own, as the bundle's golden vectors are) verifies."""
    from ldm_export.build import BuildConfig, build

    root, loras = packs
    bundle = tmp_path / "fp16"
    build(BuildConfig(model=tiny_sd, out=bundle, resolutions=((32, 32),), precision="fp16",
                      calibration=_calibration(tiny_sd, tmp_path)))
    meta = write_pack(bundle, tiny_sd, loras["te"].path, tmp_path / "pack16")
    assert {e["dtype"] for e in meta["entries"]} == {"float16"} and meta["golden"]["expected"] == "bundle"
    ok = _ldm_run("verify", bundle, "--adapter", tmp_path / "pack16")
    assert ok.returncode == 0 and "PASS" in ok.stdout, ok.stdout + ok.stderr
    fp32 = runtime_image(runtime_pipeline(tiny_bundle, [(root / "pack_te", 1.0)]))
    fp16 = runtime_image(runtime_pipeline(bundle, [(tmp_path / "pack16", 1.0)]))
    assert max_diff(fp16, fp32) <= 6   # the fp16 bundle with the adapter computes what the fp32 one does
    assert max_diff(fp16, runtime_image(runtime_pipeline(bundle))) > 10   # and the adapter acts there


def _calibration(model, tmp_path):
    from ldm_export.calibration import collect

    collect(model, tmp_path / "calib", prompts="general", steps=2, samples=2, seed=0, per_trajectory=1)
    return tmp_path / "calib"


@pytest.mark.slow   # ~3 min here: the int8 build calibrates, quantizes and records its own golden vectors
def test_int8_bundle_requantizes_the_adapted_weights(packs, tiny_sd, tiny_bundle, tmp_path):
    """An int8 bundle: the pack maps to the int8 weights behind their DequantizeLinear, the adapted weights are
    re-quantized per channel (activation scales kept); scale 0 gives the bundle's own image bit for bit; the
    image stays within 30 dB of fp32 with the same pack (measured: 32.7 dB with the adapter, 40.0 dB without:
    the adapter moves activations past the calibrated ranges, which are kept)."""
    from ldm_export.build import BuildConfig, build
    from ldm_runtime.metrics import psnr

    root, loras = packs
    bundle = tmp_path / "int8"
    build(BuildConfig(model=tiny_sd, out=bundle, resolutions=((32, 32),), precision="int8",
                      calibration=_calibration(tiny_sd, tmp_path), allow_below_target=True))
    meta = write_pack(bundle, tiny_sd, loras["te"].path, tmp_path / "pack8")
    assert {e["dtype"] for e in meta["entries"]} == {"int8"}
    assert all(e["quantization"]["scale"] for e in meta["entries"])
    base8 = runtime_image(runtime_pipeline(bundle))
    assert np.array_equal(runtime_image(runtime_pipeline(bundle, [(tmp_path / "pack8", 0.0)])), base8)
    ok = _ldm_run("verify", bundle, "--adapter", tmp_path / "pack8")
    assert ok.returncode == 0 and "PASS" in ok.stdout, ok.stdout + ok.stderr
    int8 = runtime_image(runtime_pipeline(bundle, [(tmp_path / "pack8", 1.0)]))
    fp32 = runtime_image(runtime_pipeline(tiny_bundle, [(root / "pack_te", 1.0)]))
    base32 = runtime_image(runtime_pipeline(tiny_bundle))
    with_adapter, without = psnr(int8, fp32, 255.0), psnr(base8, base32, 255.0)
    print(f"int8 vs fp32 image PSNR: {with_adapter:.1f} dB with the adapter, {without:.1f} dB without")
    assert max_diff(int8, base8) > 10 and with_adapter >= 30 and without >= 30
