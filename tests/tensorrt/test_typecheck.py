"""mypy over every TensorRT-using module, against TensorRT's type stubs (tensorrt-stubs 10.13, made
readable by patch_stubs.py): a misspelled or misused TensorRT call fails here, without TensorRT.

The stubs describe 10.13; APIs that 11.x removed or 10.3 lacks are the API-gate table's business
(test_versions.py proves no module touches one)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tensorrt.patch_stubs import find_stubs, patch_stubs

pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")

REPO = Path(__file__).resolve().parents[2]
TRT_MODULES = ["runtimes/ldm_runtime/tensorrt", "runtimes/ldm_runtime/runners/tensorrt.py",
               "ldm_export/targets/tensorrt"]
CONFIG = """\
[mypy]
strict = True
# calls into the untyped parts of the project (the Runner base class) are allowed; every function
# of the checked modules is typed (disallow_untyped_defs, from strict)
allow_untyped_calls = True
follow_imports = silent
mypy_path = {stubs}:{runtimes}
cache_dir = {cache}
[mypy-tensorrt.*]
ignore_errors = True
[mypy-tensorrt_bindings.*]
ignore_errors = True
[mypy-cuda.*]
ignore_missing_imports = True
"""


@pytest.fixture(scope="module")
def mypy_config(tmp_path_factory) -> Path:
    if find_stubs() is None:
        pytest.skip("tensorrt-stubs are not installed (pip install --no-deps tensorrt-stubs==10.13.0.35.1)")
    root = tmp_path_factory.mktemp("mypy")
    stubs = patch_stubs(root / "stubs")
    ini = root / "mypy.ini"
    ini.write_text(CONFIG.format(stubs=stubs, runtimes=REPO / "runtimes", cache=root / "cache"))
    return ini


def _mypy(config: Path, *paths: str) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), *paths],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout + p.stderr


def test_the_published_stubs_need_the_patch():
    site = find_stubs()
    if site is None:
        pytest.skip("tensorrt-stubs are not installed")
    with pytest.raises(SyntaxError):
        ast.parse((site / "tensorrt_bindings" / "tensorrt.pyi").read_text())


def test_tensorrt_modules_type_check(mypy_config):
    rc, out = _mypy(mypy_config, *TRT_MODULES)
    assert rc == 0, out
    assert "Success: no issues found" in out


def test_mypy_would_catch_a_misspelled_or_misused_call(mypy_config, tmp_path):
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "import tensorrt as trt\n\n\n"
        "def bind(context: trt.IExecutionContext, config: trt.IBuilderConfig) -> None:\n"
        "    context.set_tensor_adress('sample', 0)\n"
        "    context.set_tensor_address('sample', 0)\n"
        "    config.set_memory_pool_limit('WORKSPACE', 1 << 30)\n"
        "    config.set_flag(trt.BuilderFlag.REFIT)\n")
    rc, out = _mypy(mypy_config, str(snippet))
    assert rc == 1
    assert 'has no attribute "set_tensor_adress"' in out
    assert 'Argument 1 to "set_memory_pool_limit" of "IBuilderConfig" has incompatible type "str"' in out
    assert "snippet.py:6" not in out and "snippet.py:8" not in out   # the correct calls pass
