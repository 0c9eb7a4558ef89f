"""``ldm-export build --lora``: adapters fused into the UNet and text encoder before the export, checked
against diffusers' pipeline with the same LoRA loaded and fused (and, for the text encoder, against PEFT's
own merge of the same factors)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from ldm_export.build import BuildConfig, build
from tests.export.lora_oracle import diffusers_fused, diffusers_image, max_diff, runtime_image, runtime_pipeline
from tests.models.lora import TEXT_ATTENTION, make_lora, peft_merged, to_kohya


@pytest.fixture(scope="module")
def loras(tiny_sd, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {"unet": make_lora(tiny_sd, root / "unet.safetensors", seed=1),
            "unet_b": make_lora(tiny_sd, root / "unet_b.safetensors", seed=7, rank=2, alpha=2.0),
            "both": make_lora(tiny_sd, root / "both.safetensors", seed=3, text_targets=TEXT_ATTENTION)}


def _build(model, out, loras=()):
    return build(BuildConfig(model=model, out=out, resolutions=((32, 32),), loras=tuple(loras)))


def test_build_lora_matches_diffusers_fused(tiny_sd, loras, tmp_path):
    lora = loras["unet"]
    manifest = _build(tiny_sd, tmp_path / "b", [(lora.path, 0.8)])
    entry, = manifest["adapters"]
    assert entry["file"] == lora.path.name and entry["scale"] == 0.8 and entry["modules"] == {"unet": 32,
                                                                                             "text_encoder": 0}
    assert len(entry["sha256"]) == 64
    oracle = diffusers_image(diffusers_fused(tiny_sd, [(lora.path, 0.8)]))
    base = diffusers_image(_plain(tiny_sd))
    got = runtime_image(runtime_pipeline(tmp_path / "b"))
    assert max_diff(got, oracle) <= 2
    assert max_diff(oracle, base) > 10   # the adapter does change the image: the comparison means something


def _plain(model):
    from tests.export.lora_oracle import diffusers_pipe

    return diffusers_pipe(model)


@pytest.fixture(scope="module")
def both_bundle(tiny_sd, loras, tmp_path_factory):
    out = tmp_path_factory.mktemp("both") / "b"
    manifest = _build(tiny_sd, out, [(loras["both"].path, 1.0)])
    assert manifest["adapters"][0]["modules"] == {"unet": 32, "text_encoder": 8}
    return out


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_build_with_text_encoder_lora_matches_peft_merge(tiny_sd, loras, both_bundle, eta):
    lora, out = loras["both"], both_bundle
    pipe = _plain(tiny_sd)
    peft_merged(pipe, lora, 1.0)
    oracle = diffusers_image(pipe, seed=3, eta=eta)
    assert max_diff(runtime_image(runtime_pipeline(out), seed=3, eta=eta), oracle) <= 2
    # the text encoder's factors count: the UNet's alone give another image
    unet_only = _plain(tiny_sd)
    peft_merged(unet_only, dataclasses.replace(lora, text_targets=()), 1.0)
    assert max_diff(diffusers_image(unet_only, seed=3, eta=eta), oracle) > 2


def test_two_adapters_match_diffusers_with_both(tiny_sd, loras, tmp_path):
    a, b = loras["unet"], loras["unet_b"]
    _build(tiny_sd, tmp_path / "b", [(a.path, 1.0), (b.path, 0.5)])
    oracle = diffusers_image(diffusers_fused(tiny_sd, [(a.path, 1.0), (b.path, 0.5)]))
    assert max_diff(runtime_image(runtime_pipeline(tmp_path / "b")), oracle) <= 2


def test_kohya_file_fuses_like_the_diffusers_format(tiny_sd, loras, tmp_path):
    from ldm_export.loading import load_model
    from ldm_export.lora import LoraSpec, fuse_adapters, read_factors

    lora = loras["both"]
    kohya = to_kohya(lora, tmp_path / "kohya.safetensors")
    models = [load_model(tiny_sd), load_model(tiny_sd)]
    fa, fb = read_factors(models[0], LoraSpec(lora.path)), read_factors(models[1], LoraSpec(kohya))
    assert {c: sorted(v) for c, v in fa.items()} == {c: sorted(v) for c, v in fb.items()}
    for comp in fa:
        for name, f in fa[comp].items():
            g = fb[comp][name]
            assert f.scaling == g.scaling == lora.alpha / lora.rank
            assert np.array_equal(f.A, g.A) and np.array_equal(f.B, g.B)
    fuse_adapters(models[0], [LoraSpec(lora.path, 0.6)])
    fuse_adapters(models[1], [LoraSpec(kohya, 0.6)])
    for comp in ("unet", "text_encoder"):
        sa = getattr(models[0].modules, comp).state_dict()
        sb = getattr(models[1].modules, comp).state_dict()
        assert sa.keys() == sb.keys() and all(bool((sa[k] == sb[k]).all()) for k in sa)


def test_cli_lora_scale_and_bad_file(tiny_sd, tiny_bundle, loras, tmp_path):
    lora = loras["unet"]
    cmd = [sys.executable, "-m", "ldm_export.cli", "build", str(tiny_sd), "--resolution", "32x32"]
    bad = subprocess.run(cmd + ["--out", str(tmp_path / "x"), "--lora", str(tmp_path / "missing.safetensors")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no LoRA file" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    ok = subprocess.run(cmd + ["--out", str(tmp_path / "b"), "--lora", f"{lora.path}:0"], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["adapters"][0]["scale"] == 0.0
    # at scale 0 the bundle computes what the base bundle computes, bit for bit
    assert np.array_equal(runtime_image(runtime_pipeline(tmp_path / "b")), runtime_image(runtime_pipeline(tiny_bundle)))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ldm_export.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _one_line_error(r, *fragments):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(f in line for f in fragments), line


def test_parity_of_a_merged_bundle_compares_with_the_same_lora_fused(tiny_sd, loras, tmp_path):
    """A bundle built with --lora is compared with the reference with that LoRA fused (parity --lora): it
    passes; without --lora, or with another scale, parity refuses in one line instead of failing against the
    base model (test_build_lora_matches_diffusers_fused shows the adapter moves the image by > 10 levels)."""
    lora = loras["unet"]
    _build(tiny_sd, tmp_path / "b", [(lora.path, 0.8)])
    cmd = ("parity", tmp_path / "b", "-r", tiny_sd, "--prompt", "a red circle", "--seed", "0", "--steps", "4",
           "--width", "32", "--height", "32", "--json")
    _one_line_error(_cli(*cmd), "was made with LoRA unet.safetensors:0.8", "parity was given no LoRA")
    _one_line_error(_cli(*cmd, "--lora", f"{lora.path}:0.5"), "parity was given LoRA unet.safetensors:0.5")
    ok = _cli(*cmd, "--lora", f"{lora.path}:0.8")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["cases"][0]["image_max_abs"] <= 2


def test_calibration_sets_record_their_lora_and_a_build_checks_it(tiny_sd, loras, tmp_path):
    """calibrate --lora records the adapters in the set's manifest; build --calibration refuses a set made with
    other adapters than its --lora (the int8 scales would be the base model's) before exporting anything."""
    lora = loras["unet"]
    plain, adapted = tmp_path / "plain", tmp_path / "adapted"
    args = ("calibrate", tiny_sd, "--samples", "2", "--steps", "2", "--per-trajectory", "1", "--resolution", "32x32")
    assert _cli(*args, "--out", plain).returncode == 0
    r = _cli(*args, "--out", adapted, "--lora", f"{lora.path}:0.8")
    assert r.returncode == 0, r.stderr
    entry, = json.loads((adapted / "calibration.json").read_text())["loras"]
    assert entry == {"file": "unet.safetensors", "sha256": lora_sha(lora.path), "scale": 0.8}
    assert json.loads((plain / "calibration.json").read_text())["loras"] == []
    # the adapted model's activations differ from the base model's: the record is not a label only
    from safetensors.numpy import load_file

    a, b = (load_file(next(d.glob("unet-*.safetensors"))) for d in (plain, adapted))
    assert a.keys() == b.keys() and any(not np.array_equal(a[k], b[k]) for k in a)
    build_args = ("build", tiny_sd, "--resolution", "32x32", "--precision", "int8", "--out", tmp_path / "b")
    _one_line_error(_cli(*build_args, "--calibration", plain, "--lora", f"{lora.path}:0.8"),
                    f"calibration set {plain} was made with no LoRA", "build was given LoRA unet.safetensors:0.8")
    _one_line_error(_cli(*build_args, "--calibration", adapted), "was made with LoRA unet.safetensors:0.8",
                    "build was given no LoRA")
    assert not (tmp_path / "b").exists()


def lora_sha(path):
    from ldm_runtime.bundle import sha256_file

    return sha256_file(path)
