"""`ldm-export build --target coreml` end to end, here on Linux: bundles of ML Programs that the coreml-reference
evaluator verifies and compares with diffusers, that the runtime refuses to run on a backend that cannot read
them, and whose packages are sealed file by file."""

from __future__ import annotations

import platform
import shutil

import pytest
from click.testing import CliRunner

from ldm_export.build import BuildConfig, build
from ldm_export.cli import main as export_cli
from ldm_export.parity import ParitySweep, run_parity
from ldm_runtime.bundle import open_bundle
from ldm_runtime.cli import main as run_cli
from ldm_runtime.errors import BundleError, UserError
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.request import Request
from ldm_runtime.runners.coreml import NOT_MACOS
from ldm_runtime.tolerances import quality_target
from ldm_runtime.verify import format_report, verify_bundle
from tests.bundle_edits import copy_bundle, edit
from tests.conftest import TINY_SIZES


@pytest.fixture(scope="module")
def coreml_bundle(tiny_sd, tmp_path_factory):
    """The tiny SD model as a --target coreml bundle (fp16, the default), serving both test sizes."""
    out = tmp_path_factory.mktemp("coreml-bundle") / "b"
    build(BuildConfig(model=tiny_sd, out=out, target="coreml", resolutions=TINY_SIZES))
    return out


@pytest.fixture(scope="module")
def chunked_bundle(tiny_sd, tmp_path_factory):
    """An iOS 17 bundle, UNet 6-bit palettized and, with the split threshold lowered to 1 byte (the tiny UNet is
    far under iOS's 1 GiB), shipped in two chunks."""
    from ldm_export.targets.coreml import split

    out = tmp_path_factory.mktemp("coreml-chunked") / "b"
    mp = pytest.MonkeyPatch()
    mp.setattr(split, "IOS_WEIGHT_LIMIT", 1)
    try:
        build(BuildConfig(model=tiny_sd, out=out, target="coreml", resolutions=TINY_SIZES[:1],
                          target_options=(("deployment_target", "iOS17"), ("palettize", "6"))))
    finally:
        mp.undo()
    return out


def _verify(bundle_dir, backend="coreml-reference"):
    b = open_bundle(bundle_dir)
    return verify_bundle(Pipeline(b, Components(b, backend=backend)))


def test_manifest_of_a_coreml_bundle(coreml_bundle):
    m = open_bundle(coreml_bundle).manifest
    assert (m["target"], m["backend"]["name"], m["precision"]) == ("coreml", "coreml", "fp16")
    assert m["golden"]["expected"] == "bundle" and m["resolution"]["sizes"] == "declared"
    unet = m["components"]["unet"]
    assert unet["file"] == "unet.mlpackage" and unet["format"] == "mlprogram"
    # batch 2 and 1 at both sizes, the latents at 1/2 of the image (the tiny autoencoder's factor)
    assert sorted(unet["inputs"]["sample"]["enumerated"]) == sorted(
        [b, 4, h // 2, w // 2] for (w, h) in TINY_SIZES for b in (2, 1))
    # each tensor's axes, for an app that feeds the programs itself
    assert {k: v["layout"] for k, v in unet["inputs"].items()} == {"sample": "NCHW", "timestep": "N",
                                                                   "encoder_hidden_states": "NTC"}
    assert m["components"]["text_encoder"]["inputs"]["input_ids"]["layout"] == "NT"
    assert m["components"]["vae_decoder"]["outputs"]["image"]["layout"] == "NCHW"
    # every file of every package listed (and sealed), nothing else under the packages
    on_disk = {p.relative_to(coreml_bundle).as_posix() for p in coreml_bundle.rglob("*.mlpackage/**/*") if p.is_file()}
    assert on_disk and on_disk <= set(m["files"])
    floor = quality_target("fp16").component_psnr_db
    checks = [c for c in m["build"]["checks"] if c["backend"] == "coreml-reference"]
    assert {c["component"] for c in checks} == set(m["components"])
    assert all(c["psnr_db"] >= floor for c in checks)
    assert all(db >= floor for db in m["quantization"]["vs_fp32"]["components"].values())


def test_verify_with_the_reference_evaluator(coreml_bundle):
    r = CliRunner().invoke(run_cli, ["verify", str(coreml_bundle), "--backend", "coreml-reference"])
    assert r.exit_code == 0 and r.stdout.strip().endswith("PASS"), r.output


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the message given off macOS")
def test_the_default_backend_off_macos_says_to_use_the_reference(coreml_bundle, tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["verify", str(coreml_bundle)], ["generate", str(coreml_bundle), "-p", "x", "--steps", "1"]):
        r = CliRunner().invoke(run_cli, args)
        assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == f"error: {NOT_MACOS}", r.stderr
    assert list(tmp_path.iterdir()) == []
    # a sweep says the same, once, not "task … failed …; rerun with --resume" (every task would fail alike)
    r = CliRunner().invoke(export_cli, ["parity", str(coreml_bundle), "-r", str(tiny_sd),
                                        "--prompt", "x", "--seed", "0", "--seed", "1", "--steps", "1"])
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == f"error: {NOT_MACOS}", r.stderr


def test_a_backend_that_cannot_read_the_files_is_refused(coreml_bundle, tiny_bundle):
    r = CliRunner().invoke(run_cli, ["verify", str(coreml_bundle), "--backend", "onnxruntime"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1] == ("error: --backend onnxruntime runs onnx files; this bundle holds "
                                                 "mlprogram files (target coreml); try --backend coreml or "
                                                 "coreml-reference")
    r = CliRunner().invoke(run_cli, ["verify", str(tiny_bundle), "--backend", "coreml-reference"])
    assert r.exit_code == 2 and "this bundle holds onnx files" in r.stderr


def test_backend_options_the_backend_ignores_are_refused(coreml_bundle):
    r = CliRunner().invoke(run_cli, ["verify", str(coreml_bundle), "--backend", "coreml-reference",
                                     "--compute-units", "cpu"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1] == ("error: --compute-units applies to --backend coreml only; this run "
                                                 "uses --backend coreml-reference")


def test_only_the_declared_sizes_are_served(coreml_bundle):
    b = open_bundle(coreml_bundle)
    pipe = Pipeline(b, Components(b, backend="coreml-reference"))
    assert pipe.check(Request(prompt="x", width=64, height=48, steps=2)) == (64, 48)
    with pytest.raises(UserError, match=r"resolution 48x48 is not one this bundle serves: its programs take only "
                                        r"32x32, 64x48"):
        pipe.check(Request(prompt="x", width=48, height=48, steps=2))


def test_parity_against_diffusers_through_the_reference_evaluator(coreml_bundle, tiny_sd):
    """fp16 programs against diffusers' fp32 pipeline: the fp16 targets (35 dB per component, 30 dB images)."""
    sweep = ParitySweep(bundle=coreml_bundle, reference=tiny_sd, backend="coreml-reference",
                        base=Request(steps=8, guidance_scale=7.5, width=64, height=48),
                        prompts=("a red circle on the left",), seeds=(0,))
    report = run_parity(sweep)
    assert report.ok, report.to_dict()
    target = quality_target("fp16")
    assert min(r["psnr_db"] for r in report.components) >= target.component_psnr_db
    assert report.cases[0]["image_psnr_db"] >= target.image_psnr_db


def test_another_models_unet_fails_verify(coreml_bundle, tmp_path):
    """The check can fail: the UNet package replaced by the same architecture's with other weights (the files
    resealed, so only the numbers catch it)."""
    from ldm_export.export import component_graphs
    from ldm_export.loading import load_model
    from ldm_export.targets.coreml.convert import convert_component
    from ldm_runtime.bundle import sha256_file
    from tests.models import make

    bad = copy_bundle(coreml_bundle, tmp_path / "bad")
    other = load_model(make("tiny-sd", tmp_path / "other", seed=1))
    unet = next(g for g in component_graphs(other) if g.name == "unet")
    shutil.rmtree(bad / "unet.mlpackage")
    convert_component(unet, list(TINY_SIZES), precision="fp16", out=bad / "unet.mlpackage")

    def reseal(m):
        m["files"] = {k: v for k, v in m["files"].items() if not k.startswith("unet.mlpackage/")}
        m["files"].update({p.relative_to(bad).as_posix(): sha256_file(p)
                           for p in (bad / "unet.mlpackage").rglob("*") if p.is_file()})

    edit(bad, reseal)
    report = _verify(bad)
    assert [c.name for c in report.checks if not c.ok][:1] == ["unet"], format_report(report)
    r = CliRunner().invoke(run_cli, ["verify", str(bad), "--backend", "coreml-reference"])
    assert r.exit_code == 1 and r.stdout.strip().endswith("FAIL"), r.output


def test_a_file_added_to_a_package_is_refused(coreml_bundle, tmp_path):
    bad = copy_bundle(coreml_bundle, tmp_path / "bad")
    (bad / "unet.mlpackage" / "Data" / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"bundle folder unet.mlpackage holds unet.mlpackage/Data/extra.bin, "
                                          r"which the manifest does not list"):
        open_bundle(bad)


def test_compressed_and_chunked_bundle_verifies(chunked_bundle):
    m = open_bundle(chunked_bundle).manifest
    unet = m["components"]["unet"]
    assert [c["file"] for c in unet["chunks"]] == ["unet_chunk1.mlpackage", "unet_chunk2.mlpackage"]
    assert unet["file"] == "unet_chunk1.mlpackage" and not (chunked_bundle / "unet.mlpackage").exists()
    q = m["quantization"]
    assert q["compression"] == "palettize-6" and q["components"]["unet"]["nbits"] == 6
    assert set(q["components"]) == {"unet", "text_encoder"}  # the autoencoder stays as converted
    sizes = q["components"]["unet"]["size_bytes"]
    assert sizes["compressed"] < sizes["source"]
    report = _verify(chunked_bundle)
    assert report.ok, format_report(report)


@pytest.mark.parametrize("args, message", [
    (["--palettize", "6"], "--palettize applies to --target coreml only; this build is --target onnx"),
    (["--target", "coreml", "--precision", "int8"], "--target coreml builds --precision fp16 or fp32; got 'int8': "
     "for int8 weights use --weights int8"),
    (["--target", "coreml", "--palettize", "6", "--target-psnr", "30"], "--target-psnr applies to --palettize mixed"),
    (["--target", "coreml", "--palettize", "4", "--weights", "int8"], "--palettize and --weights both compress"),
    (["--target", "coreml", "--workspace", "1G"], "--workspace applies to --target tensorrt only"),
    (["--target", "coreml", "--calibration", "."], "--calibration applies to builds that calibrate"),
])
def test_options_the_target_does_not_take_are_refused(tiny_sd, tmp_path, args, message):
    r = CliRunner().invoke(export_cli, ["build", str(tiny_sd), "--out", str(tmp_path / "b"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_every_family_builds_and_verifies(tmp_path_factory):
    """Criterion 3 of the Core ML issue: each family's tiny model, fp32 (golden: torch's) and fp16 (its own)."""
    from tests.models import FAMILIES, make

    for name in FAMILIES:
        root = tmp_path_factory.mktemp(name)
        model = make(name, root / "model")
        for precision in ("fp32", "fp16"):
            out = root / precision
            build(BuildConfig(model=model, out=out, target="coreml", precision=precision))
            report = _verify(out)
            assert report.ok, (name, precision, format_report(report))
        shutil.rmtree(root)


def test_report_runs_onnx_and_core_ml_bundles_side_by_side(coreml_bundle, tiny_bundle, tmp_path):
    """`ldm-export report A B --backend coreml-reference`: the Core ML bundle runs on the evaluator, the ONNX
    bundle (which that backend cannot read) on its own backend, in one table with each one's quality target."""
    import json

    r = CliRunner().invoke(export_cli, ["report", str(tiny_bundle), str(coreml_bundle), "--runs", "1",
                                        "--backend", "coreml-reference", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads((tmp_path / "r.json").read_text())}
    onnx, coreml = rows[str(tiny_bundle)], rows[str(coreml_bundle)]
    assert (onnx["backend"], coreml["backend"]) == ("onnxruntime", "coreml-reference")
    assert (onnx["precision"], coreml["precision"], coreml["quality"]) == ("fp32", "fp16", "fp16")
    assert set(coreml["latency_ms"]) == set(onnx["latency_ms"]) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert set(coreml["component_psnr_db"]) == set(onnx["component_psnr_db"])
    assert all(v >= quality_target("fp16").component_psnr_db for v in coreml["component_psnr_db"].values())
    assert "coreml-reference" in r.stdout and "onnxruntime" in r.stdout
