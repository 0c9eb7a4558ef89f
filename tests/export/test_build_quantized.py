"""ldm-export build --precision fp16/int8/mixed: recipes in the bundle, own golden vectors, verify,
parity against the quality target, the report, and bad input (tiny random-weight model)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from ldm_export.build import BuildConfig, build
from ldm_export.cli import main as export_cli
from ldm_export.golden import GOLDEN as DEFAULT_GOLDEN
from ldm_export.parity import ParitySweep, run_parity
from ldm_runtime.runners import RunnerOptions
from ldm_runtime.request import Request
from ldm_export.report import ReportConfig, run_report
from ldm_runtime.bundle import open_bundle
from ldm_runtime.errors import UserError
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.verify import verify_bundle

GOLDEN = replace(DEFAULT_GOLDEN, steps=4)


@pytest.fixture(scope="module")
def calib(tiny_calibration):
    return tiny_calibration


@pytest.fixture(scope="module")
def bundles(tiny_quantized_bundles):
    return tiny_quantized_bundles


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantized_bundle_records_recipe_and_verifies_against_its_own_golden(bundles, precision):
    path = bundles[precision]
    b = open_bundle(path)
    m = b.manifest
    assert m["precision"] == precision and m["golden"]["expected"] == "bundle"
    q = m["quantization"]
    assert q["recipe"] == precision and q["calibration"]["model_sha256"] == m["source"]["sha256"]
    recipe = json.loads((path / "recipe.json").read_text())
    assert set(recipe) == set(m["components"])
    assert m["components"]["unet"]["precision"] == ("fp16" if precision == "fp16" else "int8-static")
    # inputs and outputs stay float32 whatever the recipe
    for comp in m["components"].values():
        assert all(s["dtype"] in ("float32", "int64") for s in {**comp["inputs"], **comp["outputs"]}.values())
    # no scratch folders left in the bundle
    assert not [p for p in path.rglob(".*")]
    report = verify_bundle(Pipeline(b, Components(b, options=RunnerOptions(provider="cpu"))))
    assert report.ok, [c for c in report.checks if not c.ok]
    with np.load(path / "golden" / "golden.npz") as z:
        assert "unet/ref/model_output" in z.files and "reference/image" in z.files
        own, ref = z["unet/out/model_output"], z["unet/ref/model_output"]
        assert own.shape == ref.shape and not np.array_equal(own, ref)  # its own outputs, not torch's


def test_int8_unet_is_a_qdq_graph_and_smaller(bundles):
    fp32 = bundles["fp32"] / "unet.onnx"
    int8 = bundles["int8"] / "unet.onnx"
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(int8)
    assert not {"QuantizeLinear", "DequantizeLinear"} & _ops(fp32)
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size
    fp16_types = {i.data_type for i in onnx.load(str(bundles["fp16"] / "unet.onnx")).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in fp16_types


def test_verify_catches_a_swapped_component(bundles, tmp_path):
    """The int8 bundle's golden vectors are its own: an fp16 UNet in its place fails verify."""
    path = tmp_path / "swapped"
    shutil.copytree(bundles["int8"], path)
    shutil.copyfile(bundles["fp16"] / "unet.onnx", path / "unet.onnx")
    b = open_bundle(path, check_hashes=False)
    report = verify_bundle(Pipeline(b, Components(b, options=RunnerOptions(provider="cpu"))))
    assert not next(c for c in report.checks if c.name == "unet").ok


def test_parity_of_fp16_bundle_uses_the_quality_target(bundles, tiny_sd):
    report = run_parity(ParitySweep(bundle=bundles["fp16"], reference=tiny_sd, prompts=("a red circle",), seeds=(0,),
                                    base=Request(steps=4, guidance_scale=7.5), provider="cpu"))
    assert report.components and all(r["psnr_db"] >= 35 for r in report.components)
    assert report.ok


def test_report_compares_recipes(bundles):
    rows = run_report(ReportConfig(bundles=(bundles["fp32"], bundles["fp16"], bundles["int8"]), runs=1,
                                   provider="cpu"))
    by = {r.precision: r for r in rows}
    assert by["int8"].size_bytes < by["fp32"].size_bytes
    assert by["fp32"].component_psnr_db["unet"] > 80  # fp32 against its torch reference
    assert by["fp16"].component_psnr_db["unet"] > by["int8"].component_psnr_db["unet"]
    assert set(by["int8"].latency_ms) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}


def test_calibration_from_another_model_is_refused_and_nothing_written(tiny_sd, calib, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_sd, other)
    (other / "unet" / "config.json").write_text((other / "unet" / "config.json").read_text() + " ")
    with pytest.raises(UserError, match="calibration set .* was collected from model"):
        build(BuildConfig(model=other, out=tmp_path / "b", precision="int8", calibration=calib, golden=GOLDEN))
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unreachable_mixed_target_fails_cleanly_through_the_cli(tiny_sd, calib, tmp_path):
    out = tmp_path / "mixed"
    res = CliRunner().invoke(export_cli, ["build", str(tiny_sd), "--out", str(out), "--precision", "mixed",
                                          "--calibration", str(calib), "--target-psnr", "200"])
    assert res.exit_code == 2, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "dB" in last and "Traceback" not in res.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_target_psnr_needs_mixed(tiny_sd, tmp_path):
    with pytest.raises(UserError, match="--target-psnr applies to --precision mixed"):
        build(BuildConfig(model=tiny_sd, out=tmp_path / "b", precision="fp16", target_psnr=30.0))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_bad_calibration_folder_is_one_line_and_nothing_written(tiny_sd, calib, tmp_path, damage):
    path = tmp_path / "calib"
    if damage == "truncated":
        shutil.copytree(calib, path)
        shard = sorted(path.glob("unet-*.safetensors"))[0]
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = tmp_path / "b"
    res = CliRunner().invoke(export_cli, ["build", str(tiny_sd), "--out", str(out), "--precision", "int8",
                                          "--calibration", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error:") and ("does not exist" in last if damage == "missing" else "unet-" in last)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_int8_ort_cpu_layout_builds_and_verifies(tiny_sd, calib, tmp_path):
    out = tmp_path / "cpu"
    res = CliRunner().invoke(export_cli, ["build", str(tiny_sd), "--out", str(out), "--precision", "int8",
                                          "--int8-layout", "ort-cpu", "--calibration", str(calib),
                                          "--golden-steps", "4"])
    assert res.exit_code == 0, res.output
    b = open_bundle(out)
    assert b.manifest["quantization"]["components"]["unet"]["layout"] == "ort-cpu"
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["unet"]["layout"] == "ort-cpu" and recipe["unet"]["quantized_nodes"]
    report = verify_bundle(Pipeline(b, Components(b, options=RunnerOptions(provider="cpu"))))
    assert report.ok, [c for c in report.checks if not c.ok]


def test_int8_layout_needs_an_int8_precision(tiny_sd, tmp_path):
    with pytest.raises(UserError, match="--int8-layout applies"):
        build(BuildConfig(model=tiny_sd, out=tmp_path / "b", precision="fp16", int8_layout="ort-cpu"))


def test_without_calibration_the_build_collects_a_small_set(tiny_sd, tmp_path):
    from ldm_export.build import AUTO_CALIBRATION

    out = tmp_path / "auto"
    m = build(BuildConfig(model=tiny_sd, out=out, precision="fp16", golden=GOLDEN))
    cal = m["quantization"]["calibration"]
    assert cal["samples"] == AUTO_CALIBRATION["samples"] and cal["model_sha256"] == m["source"]["sha256"]
    assert cal["records"]["unet"] == AUTO_CALIBRATION["samples"] * AUTO_CALIBRATION["per_trajectory"]
    assert not [p for p in out.rglob(".*")] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
