"""ldm-export build: loading, ONNX export + checks, bundle layout, atomic writes, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from ldm_export import build as build_mod
from ldm_export.build import BuildConfig, build
from ldm_export.resolution import parse_resolution
from ldm_export.loading import load_model
from ldm_runtime.bundle import SCHEMA_VERSION, open_bundle, sha256_file
from ldm_runtime.errors import UserError


def test_bundle_layout_and_manifest(tiny_bundle):
    b = open_bundle(tiny_bundle)  # validates schema and every sha256
    m = b.manifest
    assert m["schema_version"] == SCHEMA_VERSION and m["family"] == "text-to-image" and m["precision"] == "fp32"
    assert m["scheduler_class"] == "DDIMScheduler" and set(m["integrity"]) == {"sha256", "sections"}
    assert set(m["components"]) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert m["resolution"] == {"multiple_of": 4, "declared": [[32, 32], [64, 48]], "default": [32, 32],
                               "min": [32, 32], "max": [64, 48], "sizes": "range"}
    assert m["latent"]["downsample_factor"] == 2 and m["latent"]["scaling_factor"] == pytest.approx(0.18215)
    assert m["scheduler"]["beta_schedule"] == "scaled_linear" and "_class_name" not in m["scheduler"]
    for rel, digest in m["files"].items():
        assert sha256_file(tiny_bundle / rel) == digest
        assert (tiny_bundle / rel).stat().st_mode & 0o644 == 0o644, f"{rel} must be readable by all"
    # no staging leftovers beside the bundle
    assert not [p for p in tiny_bundle.parent.iterdir() if p.name.startswith(".")]


def test_onnx_graphs_have_fixed_names_and_dynamic_axes(tiny_bundle):
    m = open_bundle(tiny_bundle).manifest
    for name, comp in m["components"].items():
        model = onnx.load(str(tiny_bundle / comp["file"]))
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.input] == list(comp["inputs"])
        assert [o.name for o in model.graph.output] == list(comp["outputs"])
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", f"{name}: batch must be dynamic for classifier-free guidance"
    unet_in = m["components"]["unet"]["inputs"]
    assert unet_in["sample"]["shape"] == ["batch", 4, "latent_height", "latent_width"]
    assert unet_in["encoder_hidden_states"]["shape"] == ["batch", 16, 32]


def test_build_checks_every_component_against_torch(tiny_bundle):
    checks = open_bundle(tiny_bundle).manifest["build"]["checks"]
    names = {c["component"] for c in checks}
    assert names == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert {c["size"] for c in checks if c["component"] == "unet"} == {"32x32", "64x48"}
    assert all(c["rel_l2"] < 1e-4 for c in checks)


def test_golden_vectors_cover_components_and_trajectory(tiny_bundle):
    m = open_bundle(tiny_bundle).manifest
    with np.load(tiny_bundle / m["golden"]["file"]) as z:
        keys = set(z.files)
        assert z["trajectory/latents"].shape == (m["golden"]["steps"], 1, 4, 16, 16)
        assert z["trajectory/image"].dtype == np.uint8 and z["trajectory/image"].shape == (32, 32, 3)
    for comp in m["components"]:
        assert any(k.startswith(f"{comp}/in/") for k in keys) and any(k.startswith(f"{comp}/out/") for k in keys)


@pytest.mark.parametrize("text, expected", [("512x768", (512, 768)), ("64X64", (64, 64))])
def test_parse_resolution(text, expected):
    assert parse_resolution(text) == expected


@pytest.mark.parametrize("text", ["512", "axb", "0x64", "-64x64"])
def test_parse_resolution_rejects(text):
    with pytest.raises(UserError, match="resolution"):
        parse_resolution(text)


def test_resolution_not_a_multiple_is_refused_before_any_work(tiny_sd, tmp_path):
    with pytest.raises(UserError, match=r"30x32 is not a multiple of 4.*try 32x32"):
        build(BuildConfig(model=tiny_sd, out=tmp_path / "b", resolutions=((30, 32),)))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten(tiny_sd, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        build(BuildConfig(model=tiny_sd, out=out))
    assert (out / "keep.txt").read_text() == "x"


def test_failed_build_leaves_nothing_behind(tiny_sd, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt  # an interrupt mid-build, after the ONNX files were written

    monkeypatch.setattr(build_mod, "golden_arrays", boom)
    with pytest.raises(KeyboardInterrupt):
        build(BuildConfig(model=tiny_sd, out=tmp_path / "b", resolutions=((32, 32),)))
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_bundle(tiny_sd, tiny_bundle, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    before = (out / "manifest.json").read_text()
    monkeypatch.setattr(build_mod, "golden_arrays", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        build(BuildConfig(model=tiny_sd, out=out, overwrite=True, resolutions=((32, 32),)))
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_large_component_uses_one_external_data_file(tiny_sd, tmp_path, monkeypatch):
    from ldm_export import export

    monkeypatch.setattr(export, "TWO_GB", 1024)  # treat every component as "over 2 GB"
    model = load_model(tiny_sd)
    unet = next(g for g in export.component_graphs(model) if g.name == "unet")
    files = export.export_onnx(unet, tmp_path, (32, 32))
    assert files == ["unet.onnx", "unet.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    graph = onnx.load(str(tmp_path / "unet.onnx"), load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    locations = {e.value for t in external for e in t.external_data if e.key == "location"}
    assert locations == {"unet.onnx.data"}
    assert sum(np.prod(t.dims) for t in external) > 0.9 * sum(np.prod(t.dims) for t in graph.initializer)
    rows = export.check_against_torch(unet, tmp_path / "unet.onnx", [(32, 32)])
    assert rows[0]["rel_l2"] < 1e-4


def test_onnx_mismatch_stops_the_build_with_the_component_name(tiny_sd, tmp_path):
    """Export, then change a weight in torch: the ORT-vs-torch check must name the component."""
    import torch

    from ldm_export import export
    from ldm_runtime.errors import ParityError

    model = load_model(tiny_sd)
    dec = next(g for g in export.component_graphs(model) if g.name == "vae_decoder")
    files = export.export_onnx(dec, tmp_path, (32, 32))
    with torch.no_grad():
        model.modules.vae.decoder.conv_out.bias += 0.5
    with pytest.raises(ParityError, match=r"vae_decoder at 32x32: ONNX Runtime differs from torch in .image. \(max abs"):
        export.check_against_torch(dec, tmp_path / files[0], [(32, 32)])


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing", "found nothing"),
    (lambda p: (p / "model.txt").write_bytes(b"x") and p / "model.txt", r"found a file \(\.txt\)"),
    (lambda p: (p / "model.ckpt").write_bytes(b"x") and p / "model.ckpt",
     "model.ckpt is a single-file checkpoint: pass its original YAML with --config"),
    (lambda p: (p / "unet").mkdir() or p, "folder without model_index.json"),
    (lambda p: (p / "model_index.json").write_text('{"_class_name": "FluxPipeline"}') and p,
     "it is a FluxPipeline; supported"),
    (lambda p: (p / "model_index.json").write_text("{oops") and p, "not valid JSON"),
    (lambda p: (p / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}') and p,
     "lacks unet/, vae/, text_encoder/, tokenizer/, scheduler/"),
])
def test_unsupported_inputs_get_one_line_errors(tmp_path, make, match):
    with pytest.raises(UserError, match=match) as e:
        load_model(make(tmp_path))
    assert "\n" not in str(e.value)


def test_bin_weights_load_too(tiny_sd, tmp_path):
    """Folders with PyTorch .bin weights (older diffusers saves) load like safetensors ones."""
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "m"
    shutil.copytree(tiny_sd, folder)
    for sub, st_name, bin_name in (("unet", "diffusion_pytorch_model", "diffusion_pytorch_model"),
                                   ("vae", "diffusion_pytorch_model", "diffusion_pytorch_model"),
                                   ("text_encoder", "model", "pytorch_model")):
        st = folder / sub / f"{st_name}.safetensors"
        torch.save(load_file(st), folder / sub / f"{bin_name}.bin")
        st.unlink()
    a, b = load_model(tiny_sd), load_model(folder)
    x, ids = torch.randn(1, 4, 8, 8), torch.arange(16)[None]
    with torch.no_grad():
        assert torch.equal(a.modules.vae.decode(x).sample, b.modules.vae.decode(x).sample)
        assert torch.equal(a.modules.text_encoder(ids)[0], b.modules.text_encoder(ids)[0])
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


def test_sigterm_during_build_leaves_nothing_behind(tiny_sd, tmp_path):
    """`kill` (SIGTERM) of a running `ldm-export build` removes its staging folder."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ldm_export.cli", "build", str(tiny_sd), "--out",
                             str(tmp_path / "b")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".b.partial-*/*.onnx")):
        time.sleep(0.1)
    assert list(tmp_path.glob(".b.partial-*/*.onnx")), "the build never reached the export stage"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_stale_staging_of_a_killed_build_is_cleaned(tmp_path):
    from ldm_export.bundle import staging_folder

    stale = tmp_path / ".b.partial-999999999"  # no such process
    stale.mkdir()
    (stale / "unet.onnx").write_bytes(b"half")
    with staging_folder(tmp_path / "b") as staging:
        (staging / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_the_bundle_records_its_default_guidance_scale(tiny_sd, tmp_path):
    """--guidance is recorded as guidance.default_scale (what ldm-run generate uses without one); without it a
    model other than the demo gets Stable Diffusion's 7.5; unguided families record no scale."""
    import dataclasses

    from ldm_export.demo import GUIDANCE, MODEL_DIR
    from ldm_export.model import Guidance

    model = load_model(tiny_sd)
    entry = build_mod._guidance_entry(model, BuildConfig(model=tiny_sd, out=tmp_path / "b", guidance=3.0))
    assert entry == {**model.guidance.to_manifest(), "default_scale": 3.0}
    assert build_mod._guidance_entry(model, BuildConfig(model=tiny_sd, out=tmp_path / "b"))["default_scale"] == 7.5
    assert build_mod._guidance_entry(model, BuildConfig(model=MODEL_DIR, out=tmp_path / "b"))["default_scale"] == GUIDANCE
    unguided = dataclasses.replace(model, guidance=Guidance("never", negative_prompt=False))
    assert "default_scale" not in build_mod._guidance_entry(unguided, BuildConfig(model=tiny_sd, out=tmp_path / "b"))


def test_the_device_cache_is_not_sealed_into_the_bundle(tiny_bundle, tmp_path):
    """engines/ (engines the build ships, what ldm-run prepare adds) is left out of the manifest's files, so a
    device that rewrites it (prepare --force) still opens the bundle; every other file is listed."""
    import shutil

    from ldm_export.bundle import finalize_manifest
    from ldm_runtime.bundle import INTEGRITY, MANIFEST

    root = shutil.copytree(tiny_bundle, tmp_path / "b")
    body = json.loads((root / MANIFEST).read_text())
    for key in ("files", INTEGRITY, "schema_version"):
        body.pop(key)
    (root / "engines" / "k").mkdir(parents=True)
    (root / "engines" / "k" / "unet.plan").write_bytes(b"plan")
    files = finalize_manifest(root, body)["files"]
    assert "unet.onnx" in files and not any(f.startswith("engines/") for f in files)
    (root / "engines" / "k" / "unet.plan").write_bytes(b"rebuilt by prepare --force")
    open_bundle(root)
