"""The runners' contract on the Core ML backends: one-line errors (unknown op, damaged or missing package,
not macOS), and the macOS runner against the reference on a Mac."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from ldm_runtime.errors import BackendUnavailable, BundleError
from ldm_runtime.runners import RunnerOptions
from ldm_runtime.runners.coreml import NOT_MACOS, CoreMLRunner
from ldm_runtime.runners.coreml_reference import CoreMLReferenceRunner
from ldm_runtime.runners.coreml_reference.evaluate import evaluate
from ldm_runtime.runners.coreml_reference.program import Op, Program, from_mil
from tests.conftest import TINY_SIZES

from .mil import program


def test_unknown_op_is_one_line_naming_op_and_component():
    """conv_transpose is a real MIL op the evaluator does not implement (no converted component uses it)."""
    def build(mb, dt, x):
        return mb.conv_transpose(x=x, weight=np.ones((2, 2, 3, 3), np.float32), pad_type="valid")

    prog = from_mil(program(build, [np.zeros((1, 2, 4, 4), np.float32)]), "unet")
    with pytest.raises(BundleError) as e:
        evaluate(prog, {"a": np.zeros((1, 2, 4, 4), np.float32)})
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("unet: the Core ML reference evaluator has no kernel for MIL op 'conv_transpose'")


def test_unknown_op_stops_before_any_kernel_runs_its_successors():
    prog = Program("vae_decoder", {"x": np.dtype(np.float32)}, ["y"],
                   [Op("frobnicate", "f0", {"x": "x"}, ("y",), (np.dtype(np.float32),))])
    with pytest.raises(BundleError, match="vae_decoder: .* MIL op 'frobnicate' \\(op 'f0'\\)"):
        evaluate(prog, {"x": np.zeros(3, np.float32)})


def test_missing_and_damaged_packages(tmp_path):
    spec = {"inputs": {"x": {"dtype": "float32", "shape": [1]}}, "outputs": {"y": {"dtype": "float32", "shape": [1]}}}
    with pytest.raises(BundleError, match="is not a Core ML package"):
        CoreMLReferenceRunner("unet", tmp_path / "absent.mlpackage", spec).load()
    broken = tmp_path / "broken.mlpackage"
    (broken / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (broken / "Manifest.json").write_text("{}")
    with pytest.raises(Exception) as e:
        CoreMLReferenceRunner("unet", broken, spec).load()
    assert not isinstance(e.value, AssertionError)


def test_outputs_the_programs_do_not_produce(tiny_sd_coreml):
    path, record = tiny_sd_coreml["fp32", "vae_decoder"]
    spec = {**record, "outputs": {"picture": record["outputs"]["image"]}}
    with pytest.raises(BundleError, match=r"declares outputs \['picture'\] that its programs do not produce"):
        CoreMLReferenceRunner("vae_decoder", path, spec).load()


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the message given off macOS")
def test_coreml_runner_off_macos(tiny_sd_coreml):
    path, record = tiny_sd_coreml["fp32", "vae_decoder"]
    with pytest.raises(BackendUnavailable) as e:
        CoreMLRunner("vae_decoder", path, record).load()
    assert str(e.value) == NOT_MACOS
    assert NOT_MACOS == "Core ML prediction needs macOS; --backend coreml-reference checks the programs here"


@pytest.mark.macos
@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML prediction needs macOS")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_coreml_runner_matches_the_reference(tiny_sd_coreml, tiny_sd_graphs, precision):
    from ldm_runtime.metrics import compare

    for name in ("text_encoder", "unet", "vae_decoder"):
        path, record = tiny_sd_coreml[precision, name]
        feeds = tiny_sd_graphs[name].make_inputs(2, *TINY_SIZES[0], np.random.default_rng(0))
        with CoreMLRunner(name, path, record, RunnerOptions(compute_units="cpu")) as device, \
                CoreMLReferenceRunner(name, path, record) as reference:
            got, want = device.run(feeds), reference.run(feeds)
        for key in want:
            assert compare(got[key], want[key])["cosine"] > 0.9999
