"""Without TensorRT (this machine: PyPI's tensorrt cannot be installed, there is no GPU), every entry
point says so in one line with the install that fixes it, and the build ships graphs only."""

from __future__ import annotations

import json
import subprocess

import pytest

from ldm_export.targets.tensorrt.engines import build_engines, device_constraints
from ldm_runtime.errors import BackendUnavailable, BundleError, UserError
from ldm_runtime.runners.tensorrt import TensorRTRunner
from ldm_runtime.tensorrt.builder import BuildOptions, build_engine
from ldm_runtime.tensorrt.imports import tensorrt_installed
from ldm_runtime.tensorrt.prepare import prepare_bundle
from tests.conftest import blocked_python
from tests.tensorrt.conftest import ORIN_8GB

no_tensorrt = pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed here: this is the path without it")
INSTALL = 'pip install "ldm-runtime[tensorrt]" tensorrt'


def _assert_install_line(e: pytest.ExceptionInfo) -> None:
    msg = str(e.value)
    assert "\n" not in msg and INSTALL in msg and "python3-libnvinfer" in msg and "--system-site-packages" in msg


@no_tensorrt
def test_loading_the_runner_raises_the_install_line(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    runner = TensorRTRunner("unet", tiny_bundle / "unet.onnx", manifest["components"]["unet"])
    with pytest.raises(BackendUnavailable) as e:
        runner.load()
    _assert_install_line(e)
    assert not runner.is_loaded


@no_tensorrt
def test_building_raises_the_install_line(tiny_bundle):
    with pytest.raises(BackendUnavailable) as e:
        build_engine(tiny_bundle / "unet.onnx", "unet", [], BuildOptions(), ORIN_8GB, print)
    _assert_install_line(e)
    with pytest.raises(BackendUnavailable) as e:
        prepare_bundle(tiny_bundle, report=lambda m: None)
    _assert_install_line(e)


@no_tensorrt
def test_the_build_ships_graphs_and_names_the_device_command(tiny_bundle, tmp_path):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    result = build_engines(tmp_path, manifest, bundle_name="out/tiny")
    assert result.engines == [] and not (tmp_path / "engines").exists()
    assert "\n" not in result.note and result.note.endswith("ldm-run prepare out/tiny")
    constraints = device_constraints("10.3", result.engines, onnx_opset=17)
    assert constraints == {"tensorrt": {"min_version": "10.3", "engines": [], "onnx_opset": 17,
                                        "other_devices": "ldm-run prepare BUNDLE builds engines for this device",
                                        "refittable": False}}


@no_tensorrt
def test_a_refittable_build_is_recorded_and_is_what_prepare_builds_by_default(tiny_sd, tmp_path):
    """build --refittable without a GPU: the manifest says so, the note says the device's engines will be
    refittable, and ldm-run prepare's refit mode defaults to it (--not-refittable / --refittable override)."""
    from ldm_export.build import BuildConfig, build
    from ldm_runtime.bundle import open_bundle
    from ldm_runtime.runners.tensorrt import built_refittable

    lines = []
    m = build(BuildConfig(model=tiny_sd, out=tmp_path / "b", target="tensorrt", resolutions=((32, 32),),
                          target_options=(("refittable", True),)), report=lines.append)
    assert m["device_constraints"]["tensorrt"]["refittable"] is True
    assert any(line.endswith("ldm-run prepare b (refittable, as recorded in the bundle)") for line in lines), lines
    assert built_refittable(open_bundle(tmp_path / "b").manifest) is True
    assert built_refittable({"device_constraints": {"tensorrt": {}}}) is False   # bundles from before the field
    with pytest.raises(BundleError, match="'device_constraints.tensorrt.refittable' must be true or false"):
        built_refittable({"device_constraints": {"tensorrt": {"refittable": "yes"}}})


def test_bad_build_options_are_one_line():
    with pytest.raises(UserError, match="refit mode 'sometimes'"):
        BuildOptions(refit="sometimes")
    with pytest.raises(UserError, match="refit is not 'individual'"):
        BuildOptions(refit_weights=("unet.conv_in.weight",))
    from ldm_runtime.tensorrt.builder import check_build_options
    with pytest.raises(UserError, match="not supported on Jetson"):
        check_build_options(BuildOptions(hardware_compatibility_level="AMPERE_PLUS"), ORIN_8GB)
    with pytest.raises(UserError, match="needs TensorRT 10.9"):
        check_build_options(BuildOptions(hardware_compatibility_level="SAME_COMPUTE_CAPABILITY"), ORIN_8GB)


def test_without_a_gpu_cuda_python_answers_in_one_line():
    """cuda-python imports here and its calls answer cudaErrorInsufficientDriver: a real call, no stand-in."""
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    from ldm_runtime.tensorrt.cuda import NoCudaDevice, device_properties

    err, count = cudart.cudaGetDeviceCount()
    if err.name == "cudaSuccess" and count > 0:
        assert device_properties(0).major >= 5   # a GPU is here: its properties are read
        return
    with pytest.raises(NoCudaDevice) as e:
        device_properties(0)
    assert "\n" not in str(e.value) and err.name in str(e.value) and "onnxruntime backend" in str(e.value)


def test_workspace_default_is_capped_on_unified_memory(tiny_bundle):
    from ldm_runtime.tensorrt.builder import estimate_memory, workspace_bytes
    from tests.tensorrt.conftest import RTX_4090

    assert workspace_bytes(BuildOptions(), ORIN_8GB) == 1 << 30          # not TensorRT's 75 % of shared memory
    assert workspace_bytes(BuildOptions(), RTX_4090) is None
    assert workspace_bytes(BuildOptions(workspace_bytes=512 << 20), ORIN_8GB) == 512 << 20
    est = estimate_memory(tiny_bundle / "unet.onnx", BuildOptions(), ORIN_8GB)
    assert est.weights_bytes == (tiny_bundle / "unet.onnx").stat().st_size
    assert est.peak_bytes == 2 * est.weights_bytes + (1 << 30)
    assert "unet:" in est.line("unet") and "1.00 GiB" in est.line("unet")


def test_runtime_tensorrt_modules_import_with_torch_blocked():
    code = ("import ldm_runtime.tensorrt.versions, ldm_runtime.tensorrt.profiles, ldm_runtime.tensorrt.device, "
            "ldm_runtime.tensorrt.cache, ldm_runtime.tensorrt.builder, ldm_runtime.tensorrt.memory, "
            "ldm_runtime.tensorrt.prepare, ldm_runtime.tensorrt.cuda, ldm_runtime.runners.tensorrt\n"
            "import sys\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'torch', 'diffusers',"
            " 'transformers', 'ldm_export') and sys.modules[m] is not None)\n"
            "print(heavy)\n")
    out = subprocess.run(blocked_python(code), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_build_sides_child_process_answers_in_one_line_without_tensorrt(tiny_bundle, tmp_path):
    """`python -m ldm_runtime.tensorrt.prepare` (what engines.build_engines runs, torch-free) exits 2
    with the install line when TensorRT is missing."""
    if tensorrt_installed():
        pytest.skip("TensorRT is installed here")
    code = ("import sys\nfrom ldm_runtime.tensorrt.prepare import main\n"
            f"sys.exit(main([{str(tiny_bundle)!r}, '--workspace', '512M', '--json', {str(tmp_path / 'r.json')!r}]))\n")
    p = subprocess.run(blocked_python(code), capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and INSTALL in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.json").exists()


def test_sizes():
    from ldm_runtime.tensorrt.prepare import parse_size

    assert parse_size("512M") == parse_size("512MiB") == 512 << 20
    assert parse_size("2G") == 2 << 30 and parse_size("1073741824") == 1 << 30
    with pytest.raises(UserError, match="try 1G"):
        parse_size("lots")
