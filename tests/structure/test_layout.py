"""The layout holds what docs/architecture.md says: no import cycles, small units, a wheel with only
what users run, and a deploy side that never imports torch."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .imports import PACKAGES, REPO, cycles, graph, modules

MAX_FUNCTION = 80          # lines, no exceptions but the demo training script's argument parser
MAX_OVER_60 = 5
MAX_FILE = 500
LENGTH_EXEMPT = {("ldm_export.demo.train", "parse_args")}
HEAVY = ("torch", "diffusers", "transformers")
TORCH_FREE_HELPERS = ("tests.conftest", "tests.bundle_edits", "tests.fixtures")  # what tests/runtime may import


def _functions():
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name, node.name, node.end_lineno - node.lineno + 1


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_functions_and_files_are_small():
    lengths = [(n, f, length) for n, f, length in _functions() if (n, f) not in LENGTH_EXEMPT]
    too_long = [x for x in lengths if x[2] > MAX_FUNCTION]
    over_60 = [x for x in lengths if x[2] > 60]
    assert not too_long, f"functions over {MAX_FUNCTION} lines: {too_long}"
    assert len(over_60) <= MAX_OVER_60, f"more than {MAX_OVER_60} functions over 60 lines: {over_60}"
    big = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert not {n: k for n, k in big.items() if k > MAX_FILE}, f"files over {MAX_FILE} lines"


def test_the_runtime_source_never_imports_torch():
    """Statically: no import statement of torch, diffusers or transformers anywhere under runtimes/ (the
    dynamic check, every module imported with those blocked, is tests/runtime/test_cli.py's)."""
    found = []
    for path in (REPO / "runtimes").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in HEAVY]
    assert not found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> list[str]:
    """The file names in the wheel ``pip wheel . --no-deps`` builds from a copy of the project."""
    src = tmp_path_factory.mktemp("src")
    for item in ("pyproject.toml", "README.md", "ldm_export"):
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, src / item)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-w", str(out), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("*.whl")
    return zipfile.ZipFile(whl).namelist()


def test_the_wheel_holds_no_test_or_benchmark_code(wheel):
    py = [n for n in wheel if n.endswith(".py")]
    assert any(n == "ldm_export/build.py" for n in py) and any(n.startswith("ldm_export/demo/model/") for n in wheel)
    assert not [n for n in py if n.startswith(("tests/", "benchmarks/")) or "/tests/" in n]
    # the random-weight model builders and benchmark code live under tests/ and benchmarks/ only
    assert not [n for n in py if Path(n).stem.startswith(("random_", "bench_", "demo_measure", "test_"))]
    assert "ldm_export/py.typed" in wheel


def test_the_wheel_has_every_package_module(wheel):
    """The other direction: every module of ldm_export and the embedded demo model ship."""
    root = PACKAGES["ldm_export"]
    wanted = {p.relative_to(root.parent).as_posix() for p in root.rglob("*") if p.is_file()
              and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert wanted - set(wheel) == set()


def test_the_runtime_tests_need_no_build_side():
    """tests/runtime runs in a venv with only ldm-runtime: none of its files imports torch, diffusers,
    transformers or ldm_export (the oracle comparisons live in tests/export; tests/fixtures.py records what
    the runtime tests compare with)."""
    found = []
    for path in (REPO / "tests" / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in (*HEAVY, "ldm_export", "onnx")]
            found += [f"{path.name}: {n}" for n in names if n.startswith("tests.") and n not in TORCH_FREE_HELPERS]
    assert not found
