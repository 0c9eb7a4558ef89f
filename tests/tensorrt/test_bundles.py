"""`ldm-export build --target tensorrt` here, without TensorRT or a GPU: complete bundles of TensorRT-ready graphs,
checked on Linux through ONNX Runtime, and one install line from every device command."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ldm_runtime.bundle import open_bundle
from ldm_runtime.cli import main as run_cli
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.tensorrt.profiles import bundle_profiles, contains
from ldm_runtime.verify import format_report, verify_bundle
from tests.tensorrt.conftest import build_tiny


@pytest.fixture(scope="module")
def tiny_trt(tiny_sd, tiny_calibration, tmp_path_factory):
    """fp32, fp16 and int8 --target tensorrt bundles of tiny_sd."""
    root = tmp_path_factory.mktemp("trt-tiny")
    return {p: build_tiny(tiny_sd, tiny_calibration, root / p, p) for p in ("fp32", "fp16", "int8")}


def _verify_on_onnxruntime(bundle_dir):
    b = open_bundle(bundle_dir)
    report = verify_bundle(Pipeline(b, Components(b, backend="onnxruntime")))
    assert report.ok, format_report(report)
    return b.manifest


def test_every_family_verifies_on_onnxruntime(family_bundles):
    """The graphs a device compiles, proved on Linux: every family's TensorRT bundle passes verify on ORT."""
    for name, bundle in family_bundles.items():
        m = _verify_on_onnxruntime(bundle)
        assert (m["target"], m["backend"]["name"]) == ("tensorrt", "tensorrt"), name
        trt = m["device_constraints"]["tensorrt"]
        assert trt["min_version"] == "10.3" and trt["engines"] == []  # no TensorRT here: graphs only
        assert trt["profiles"] == bundle_profiles(m)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tiny_sd_at_every_precision(tiny_trt, precision):
    m = _verify_on_onnxruntime(tiny_trt[precision])
    profiles = m["device_constraints"]["tensorrt"]["profiles"]
    unet = profiles["unet"][0]
    # batch 1 and 2 (classifier-free guidance), the smallest and largest declared latent sizes
    assert contains(unet, "sample", (1, 4, 16, 16)) and contains(unet, "sample", (2, 4, 24, 32))
    assert not contains(unet, "sample", (3, 4, 16, 16))


@pytest.mark.parametrize("command", [["verify"], ["generate", "-p", "x", "--steps", "1"], ["prepare"]])
def test_device_commands_without_tensorrt_say_what_to_install(tiny_trt, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [command[0], str(tiny_trt["fp32"]), *command[1:]]
    r = CliRunner().invoke(run_cli, args, catch_exceptions=False)
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the TensorRT backend") and 'pip install "ldm-runtime[tensorrt]"' in line
    assert "JetPack" in line
    assert list(tmp_path.iterdir()) == []  # nothing written (generate's out.png neither)
