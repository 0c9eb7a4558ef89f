"""ldm-run and ldm-export as a user runs them: torch made unimportable, one-line errors, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ldm_runtime.bundle import SCHEMA_VERSION
from tests.bundle_edits import rehash
from tests.conftest import blocked_python, ldm_run_blocked


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def test_generate_and_verify_work_without_torch(tiny_bundle, tmp_path):
    out = tmp_path / "img.png"
    lat = tmp_path / "lat.npy"
    r = run(ldm_run_blocked("generate", str(tiny_bundle), "--prompt", "a red circle on the left", "--steps", "4",
                            "--seed", "3", "--width", "64", "--height", "48", "--out", str(out),
                            "--save-latents", str(lat)))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (64, 48)
    assert np.load(lat).shape == (4, 1, 4, 24, 32)
    r = run(ldm_run_blocked("verify", str(tiny_bundle)))
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and "trajectory (5 steps)" in r.stdout
    r = run(ldm_run_blocked("verify", str(tiny_bundle), "--json", "--low-memory"))
    assert json.loads(r.stdout)["ok"] is True


def test_runtime_modules_never_import_torch():
    """Every ldm_runtime module imports, and every ``ldm-run --help`` works, where importing torch, diffusers or
    transformers fails (the static check of the source is in tests/structure)."""
    code = ("import pkgutil, importlib, ldm_runtime\n"
            "for m in pkgutil.walk_packages(ldm_runtime.__path__, 'ldm_runtime.'):\n"
            "    importlib.import_module(m.name)\n"
            "from click.testing import CliRunner\nfrom ldm_runtime.cli import main\n"
            "for cmd in [[]] + [[c] for c in main.commands]:\n"
            "    assert CliRunner().invoke(main, cmd + ['--help']).exit_code == 0, cmd\n"
            "import sys\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers') "
            "and sys.modules[m] is not None]\n"
            "assert not bad, bad\nprint('ok')\n")
    r = run(blocked_python(code))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_verify_fails_with_exit_1_on_a_drifted_bundle(tiny_bundle, tmp_path):
    """Golden outputs that no longer match (as when a deployed model drifts) fail verify with exit 1."""
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    golden = root / "golden" / "golden.npz"
    with np.load(golden) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["unet/out/model_output"] = arrays["unet/out/model_output"] * 1.01
    np.savez_compressed(golden, **arrays)
    rehash(root, "golden/golden.npz")
    r = run(ldm_run_blocked("verify", str(root)))
    assert r.returncode == 1
    unet_line = next(line for line in r.stdout.splitlines() if line.startswith("unet"))
    assert unet_line.endswith("FAIL") and r.stdout.strip().endswith("FAIL")


@pytest.mark.parametrize("args, match", [
    (["generate", "{b}", "--prompt", "x", "--width", "30"], "30x32 is not a multiple of 4"),
    (["generate", "{b}", "--prompt", "x", "--width", "256", "--height", "256"], "outside the bundle's range"),
    (["generate", "{t}", "--prompt", "x"], "has no manifest.json"),
    (["generate", "{b}", "--prompt", "x", "--provider", "nope"], "execution provider 'nope' is not available"),
    (["verify", "{t}/missing"], "no bundle at"),
    (["info", "{t}"], "has no manifest.json"),
    (["generate", "{b}", "--prompt", "x", "--sampler", "euler", "--eta", "0.5"],
     "eta is a DDIM option; got eta=0.5 with sampler 'euler'"),
    (["generate", "{b}", "--prompt", "x", "--sampler", "pndm", "--steps", "3"], "needs at least 4 steps; got 3"),
])
def test_user_errors_are_one_line_without_traceback(tiny_bundle, tmp_path, args, match):
    args = [a.format(b=tiny_bundle, t=tmp_path) for a in args]
    r = run(ldm_run_blocked(*args))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], r.stderr


@pytest.mark.parametrize("sampler, calls", [("pndm", 3 * 4 + (4 - 3)), ("euler-a", 4), ("dpmpp-2m", 4)])
def test_generate_with_another_sampler_without_torch(tiny_bundle, tmp_path, sampler, calls):
    """The latents are saved after every UNet call: PNDM's Runge-Kutta warm-up makes three steps of four."""
    lat = tmp_path / "lat.npy"
    r = run(ldm_run_blocked("generate", str(tiny_bundle), "--prompt", "a red circle", "--steps", "4", "--sampler",
                            sampler, "--width", "32", "--height", "32", "--out", str(tmp_path / "o.png"),
                            "--save-latents", str(lat)))
    assert r.returncode == 0, r.stderr
    assert np.load(lat).shape == (calls, 1, 4, 16, 16)  # the tiny autoencoder halves 32x32
    r = run(ldm_run_blocked("generate", str(tiny_bundle), "--prompt", "x", "--sampler", "heun"))
    assert r.returncode == 2 and "'heun' is not one of 'ddim', 'pndm', 'dpmpp-2m', 'euler', 'euler-a'" in r.stderr


def test_tampered_bundle_is_refused_by_generate(tiny_bundle, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    r = run(ldm_run_blocked("generate", str(root), "--prompt", "x", "--out", str(tmp_path / "o.png")))
    assert r.returncode == 2 and "tokenizer/tokenizer.json was modified" in r.stderr
    assert not (tmp_path / "o.png").exists()


def test_missing_backend_says_what_to_install(tiny_bundle):
    code = ("import sys\nsys.modules['onnxruntime'] = None\nfrom ldm_runtime.cli import main\n"
            f"main(['verify', {str(tiny_bundle)!r}], prog_name='ldm-run')\n")
    r = run(blocked_python(code))
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: the ONNX Runtime backend (package 'onnxruntime') is not installed; "
                                "install it with: pip install onnxruntime")


def test_long_prompt_is_truncated_with_a_warning(tiny_bundle, tmp_path):
    r = run(ldm_run_blocked("generate", str(tiny_bundle), "--prompt", "a red circle " * 20, "--steps", "1",
                            "--out", str(tmp_path / "o.png")))
    assert r.returncode == 0, r.stderr
    assert "truncated" in r.stderr and "16 tokens" in r.stderr


def test_info(tiny_bundle):
    r = run(ldm_run_blocked("info", str(tiny_bundle)))
    assert r.returncode == 0, r.stderr
    assert "text-to-image" in r.stdout and "range 32x32 … 64x48, multiple of 4" in r.stdout
    assert "guidance    default scale 7.5 (rule greater_than_one)" in r.stdout
    info = json.loads(run(ldm_run_blocked("info", str(tiny_bundle), "--json")).stdout)
    assert info["schema_version"] == SCHEMA_VERSION


def test_every_help():
    top = run([sys.executable, "-m", "ldm_runtime.cli", "--help"])
    assert top.returncode == 0 and "Usage" in top.stdout
    for sub in ["generate", "verify", "info"]:
        r = run([sys.executable, "-m", "ldm_runtime.cli", sub, "--help"])
        assert r.returncode == 0 and "Usage" in r.stdout, r.stderr


def test_several_prompts_make_a_grid_matching_single_runs(tiny_bundle, tmp_path):
    grid, single = tmp_path / "grid.png", tmp_path / "one.png"
    r = run(ldm_run_blocked("generate", str(tiny_bundle), "-p", "a red circle", "-p", "a blue square", "-n", "2",
                            "--steps", "2", "--seed", "10", "--out", str(grid), "--save-latents",
                            str(tmp_path / "l.npy")))
    assert r.returncode == 0, r.stderr
    g = np.asarray(Image.open(grid))
    assert g.shape == (2 * 32 + 2, 2 * 32 + 2, 3)
    assert np.load(tmp_path / "l.npy").shape == (2, 4, 4, 16, 16)
    # the second image of the second prompt used seed 10 + 3
    r = run(ldm_run_blocked("generate", str(tiny_bundle), "-p", "a blue square", "--steps", "2", "--seed", "13",
                            "--out", str(single)))
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(g[34:, 34:], np.asarray(Image.open(single)))
