"""Bad inputs across every command: exit code 2 (1 for a quality gate), one line on stderr, no traceback,
and nothing the user had changed or left half-written.

Each case runs the real command line in-process (click's runner) inside its own folder that holds a copy
of what the command reads; the folder is fingerprinted (every path, size and sha256) before and after.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ldm_export.cli import main as export_cli
from ldm_runtime.cli import main as run_cli
from tests.bundle_edits import edit, rehash


@dataclass(frozen=True)
class Case:
    id: str
    tool: str                      # "run" (ldm-run) or "export" (ldm-export)
    args: tuple[str, ...]          # {model}, {bundle}, {dir}, {calib} are filled in
    match: str                     # a regex the one-line message must contain
    setup: Callable[[Path], None] | None = None   # prepares the case folder
    code: int = 2
    cwd: str | None = None         # run inside this sub-folder of the case folder


def _write(rel: str, data: bytes = b"x") -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    return setup


def _edit(fn, reseal=True) -> Callable[[Path], None]:
    return lambda d: edit(d / "bundle", fn, reseal=reseal)


def _both(*fns) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        for f in fns:
            f(d)
    return setup


def _swap_unet_and_decoder(d: Path) -> None:
    b = d / "bundle"
    (b / "unet.onnx").rename(b / "tmp.onnx")
    (b / "vae_decoder.onnx").rename(b / "unet.onnx")
    (b / "tmp.onnx").rename(b / "vae_decoder.onnx")
    rehash(b, "unet.onnx")
    rehash(b, "vae_decoder.onnx")


def _drop_golden_unet(d: Path) -> None:
    b = d / "bundle"
    path = b / "golden" / "golden.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("unet/")}
    np.savez_compressed(path, **arrays)
    rehash(b, "golden/golden.npz")


def _symlink_out(d: Path) -> None:
    b = d / "bundle"
    (d / "elsewhere.onnx").write_bytes((b / "unet.onnx").read_bytes())
    (b / "unet.onnx").unlink()
    os.symlink(d / "elsewhere.onnx", b / "unet.onnx")


def _path(field_path: str, value: str):
    def fn(m):
        comp = m["components"]["unet"]
        comp["file"] = value
        m["files"][value] = m["files"]["unet.onnx"]
    return fn


def _image(rel: str, size=(16, 16)) -> Callable[[Path], None]:
    return lambda d: Image.new("RGB", size).save(d / rel)


B, M = "{bundle}", "{model}"
GEN = ("generate", B, "-p", "a red circle", "--steps", "2")
BUILD = ("build", M)
CASES = [
    # --- ldm-export build: --out and --overwrite
    Case("build-overwrite-cwd", "export", (*BUILD, "--out", ".", "--overwrite"), "is the current folder or holds it",
         setup=_write("project/notes.txt"), cwd="project"),
    Case("build-overwrite-parent-of-cwd", "export", (*BUILD, "--out", "..", "--overwrite"),
         "is the current folder or holds it", setup=_write("project/notes.txt"), cwd="project"),
    Case("build-overwrite-ordinary-folder", "export", (*BUILD, "--out", "{dir}/notes", "--overwrite"),
         "exists and is not an ldm-export bundle; --overwrite replaces only a bundle", setup=_write("notes/a.txt")),
    Case("build-overwrite-a-file", "export", (*BUILD, "--out", "{dir}/file.txt", "--overwrite"), "is a file",
         setup=_write("file.txt")),
    Case("build-out-is-the-model", "export", (*BUILD, "--out", M, "--overwrite"), "would overlap the input"),
    Case("build-out-inside-the-model", "export", (*BUILD, "--out", M + "/unet/b", "--overwrite"),
         "would overlap the input"),
    Case("build-out-holds-the-model", "export", (*BUILD, "--out", "{dir}", "--overwrite"), "would overlap the input"),
    Case("build-out-exists", "export", (*BUILD, "--out", B), "already exists; choose another --out or pass --overwrite"),
    Case("build-out-unwritable", "export", (*BUILD, "--out", "/proc/ldm-bundle"), "cannot write"),
    # --- ldm-export build: numbers, sizes, flags that would be ignored
    Case("build-guidance-nan", "export", (*BUILD, "--out", "{dir}/b", "--guidance", "nan"), "not a finite number"),
    Case("build-guidance-inf", "export", (*BUILD, "--out", "{dir}/b", "--guidance", "inf"), "not a finite number"),
    Case("build-guidance-negative", "export", (*BUILD, "--out", "{dir}/b", "--guidance", "-1"), "-1"),
    Case("build-target-psnr-nan", "export", (*BUILD, "--out", "{dir}/b", "--precision", "mixed", "--target-psnr",
                                             "nan"), "not a finite number"),
    Case("build-resolution-not-a-size", "export", (*BUILD, "--out", "{dir}/b", "--resolution", "big"),
         "is not WIDTHxHEIGHT"),
    Case("build-resolution-not-a-multiple", "export", (*BUILD, "--out", "{dir}/b", "--resolution", "30x32"),
         r"30x32 is not a multiple of 4 .*try 32x32"),
    Case("build-resolution-too-big", "export", (*BUILD, "--out", "{dir}/b", "--resolution", "4096x4096"),
         r"resolution 4096x4096 does not fit: the unet needs about .* \(estimate\)"),
    Case("build-calibration-with-fp32", "export", (*BUILD, "--out", "{dir}/b", "--calibration", "{dir}"),
         "--calibration applies to builds that calibrate"),
    Case("build-target-psnr-with-fp32", "export", (*BUILD, "--out", "{dir}/b", "--target-psnr", "30"),
         r"--target-psnr applies to --precision mixed \(and --target coreml --palettize mixed\) only"),
    Case("build-int8-layout-with-fp32", "export", (*BUILD, "--out", "{dir}/b", "--int8-layout", "ort-cpu"),
         "--int8-layout applies to --precision int8 and mixed only"),
    Case("build-factory-on-a-diffusers-model", "export", (*BUILD, "--out", "{dir}/b", "--unet", "a.b:c"),
         "--unet names a factory of a custom model"),
    Case("build-config-on-a-diffusers-model", "export", (*BUILD, "--out", "{dir}/b", "--config", "{dir}/c.yaml"),
         "--config applies to a single-file checkpoint", setup=_write("c.yaml")),
    Case("build-tokenizer-on-a-diffusers-model", "export", (*BUILD, "--out", "{dir}/b", "--tokenizer", M + "/tokenizer"),
         "--tokenizer applies to a single-file checkpoint"),
    Case("build-missing-model", "export", ("build", "{dir}/nope", "--out", "{dir}/b"), "the path does not exist"),
    Case("build-model-is-a-text-file", "export", ("build", "{dir}/m.txt", "--out", "{dir}/b"), r"found a file \(\.txt\)",
         setup=_write("m.txt")),
    Case("build-checkpoint-without-config", "export", ("build", "{dir}/m.ckpt", "--out", "{dir}/b"),
         "is a single-file checkpoint: pass its original YAML with --config", setup=_write("m.ckpt")),
    Case("build-missing-calibration", "export", (*BUILD, "--out", "{dir}/b", "--precision", "int8", "--calibration",
                                                 "{dir}/nope"), "does not exist; create it with `ldm-export calibrate`"),
    Case("build-golden-steps-zero", "export", (*BUILD, "--out", "{dir}/b", "--golden-steps", "0"), "0"),
    # --- ldm-export calibrate
    Case("calibrate-out-is-the-model", "export", ("calibrate", M, "--out", M, "--overwrite"), "would overlap the input"),
    Case("calibrate-overwrite-ordinary-folder", "export", ("calibrate", M, "--out", "{dir}/notes", "--overwrite"),
         "is not an ldm-export calibration set", setup=_write("notes/a.txt")),
    Case("calibrate-overwrite-a-bundle", "export", ("calibrate", M, "--out", B, "--overwrite"),
         "is not an ldm-export calibration set"),
    Case("calibrate-steps-over-the-schedule", "export", ("calibrate", M, "--out", "{dir}/c", "--steps", "1000"),
         "1000 steps are too many for this scheduler.*use at most 999 steps"),
    Case("calibrate-guidance-nan", "export", ("calibrate", M, "--out", "{dir}/c", "--guidance", "nan"),
         "not a finite number"),
    Case("calibrate-per-trajectory-over-steps", "export", ("calibrate", M, "--out", "{dir}/c", "--steps", "3",
                                                           "--per-trajectory", "4"), "exceeds the trajectory's 3 steps"),
    Case("calibrate-missing-prompt-file", "export", ("calibrate", M, "--out", "{dir}/c", "--prompts", "{dir}/p.txt"),
         "prompt file .* does not exist"),
    Case("calibrate-empty-prompt-file", "export", ("calibrate", M, "--out", "{dir}/c", "--prompts", "{dir}/p.txt"),
         "holds no prompts", setup=_write("p.txt", b"# nothing\n\n")),
    Case("calibrate-resolution-too-big", "export", ("calibrate", M, "--out", "{dir}/c", "--resolution", "4096x4096"),
         "does not fit"),
    # --- ldm-export parity
    Case("parity-missing-bundle", "export", ("parity", "{dir}/nope", "-r", M), "no bundle at .*: not a folder"),
    Case("parity-another-model", "export", ("parity", B, "-r", "{dir}/other"), "is not the model .* was built from",
         setup=lambda d: shutil.copytree(d / "model", d / "other") and
         (d / "other" / "scheduler" / "scheduler_config.json").write_text(
             (d / "model" / "scheduler" / "scheduler_config.json").read_text().replace("0.012", "0.0121"))),
    Case("parity-steps-over-the-schedule", "export", ("parity", B, "-r", M, "--steps", "1000"),
         "use at most 999 steps"),
    Case("parity-eta-nan", "export", ("parity", B, "-r", M, "--eta", "nan"), "not a finite number"),
    Case("parity-guidance-inf", "export", ("parity", B, "-r", M, "--guidance", "inf"), "not a finite number"),
    Case("parity-width-not-a-multiple", "export", ("parity", B, "-r", M, "--width", "30"), "not a multiple of 4"),
    Case("parity-factory-on-a-diffusers-model", "export", ("parity", B, "-r", M, "--unet", "a.b:c"),
         "names a factory of a custom model"),
    Case("parity-class-label-on-a-text-model", "export", ("parity", B, "-r", M, "--class-label", "3"),
         "--class-label: the reference model is .*, which takes no class label \\(text conditioning\\)"),
    # --- ldm-export report
    Case("report-json-into-a-missing-folder", "export", ("report", B, "--json", "{dir}/nope/r.json"),
         "the folder .* does not exist"),
    Case("report-json-wrong-extension", "export", ("report", B, "--json", "{dir}/r.txt"), "unknown file type '.txt'"),
    Case("report-baseline-without-adherence", "export", ("report", B, "--baseline", "/nope"),
         "--baseline .* needs --adherence"),
    Case("report-missing-bundle", "export", ("report", "{dir}/nope"), "no bundle at"),
    Case("report-guidance-nan", "export", ("report", B, "--guidance", "nan"), "not a finite number"),
    # --- ldm-run generate
    Case("generate-unknown-extension", "run", (*GEN, "--out", "{dir}/x.xyz"), "unknown file type '.xyz'"),
    Case("generate-no-extension", "run", (*GEN, "--out", "{dir}/x"), r"unknown file type '\(no extension\)'"),
    Case("generate-out-into-a-missing-folder", "run", (*GEN, "--out", "{dir}/nope/x.png"), "the folder .* does not exist"),
    Case("generate-out-is-a-folder", "run", (*GEN, "--out", "{dir}"), "is a directory"),
    Case("generate-out-unwritable", "run", (*GEN, "--out", "/proc/x.png"), "cannot write"),
    Case("generate-latents-into-a-missing-folder", "run", (*GEN, "--out", "{dir}/x.png", "--save-latents",
                                                           "{dir}/nope/l.npy"), "the folder .* does not exist"),
    Case("generate-latents-wrong-extension", "run", (*GEN, "--out", "{dir}/x.png", "--save-latents", "{dir}/l.txt"),
         "unknown file type '.txt'"),
    Case("generate-guidance-nan", "run", (*GEN, "--guidance", "nan"), "not a finite number"),
    Case("generate-eta-nan", "run", (*GEN, "--eta", "nan"), "not a finite number"),
    Case("generate-eta-negative", "run", (*GEN, "--eta", "-0.5"), "-0.5"),
    Case("generate-steps-over-the-schedule", "run", ("generate", B, "-p", "x", "--steps", "1000"),
         "1000 steps are too many for this scheduler.*use at most 999 steps"),
    Case("generate-width-not-a-multiple", "run", (*GEN, "--width", "30"), r"30x32 is not a multiple of 4"),
    Case("generate-size-out-of-range", "run", (*GEN, "--width", "4096", "--height", "4096"),
         "outside the bundle's range"),
    Case("generate-class-label-on-a-text-bundle", "run", (*GEN, "--class-label", "3"), "takes no class label"),
    Case("generate-image-on-a-text-bundle", "run", (*GEN, "--image", "{dir}/in.png"), "takes no input image",
         setup=_image("in.png")),
    Case("generate-corrupt-image", "run", (*GEN, "--image", "{dir}/in.png"), "cannot read image",
         setup=_write("in.png", b"not a png")),
    Case("generate-no-prompt-on-a-text-bundle", "run", ("generate", B, "--steps", "2"), "give a --prompt"),
    Case("generate-unknown-backend", "run", (*GEN, "--backend", "magic"), "magic"),
    Case("generate-unknown-provider", "run", (*GEN, "--provider", "quantum"), "execution provider 'quantum' is not available"),
    Case("generate-negative-seed", "run", (*GEN, "--seed", "-1"), "-1"),
    Case("generate-missing-bundle", "run", ("generate", "{dir}/nope", "-p", "x"), "no bundle at"),
    # --- ldm-run verify / info on damaged bundles
    Case("verify-edited-scheduler", "run", ("verify", B), r"manifest.json was edited after the build \(changed: 'scheduler'\)",
         setup=_edit(lambda m: m["scheduler"].update(beta_end=0.02), reseal=False)),
    Case("verify-tampered-unet", "run", ("verify", B), "unet.onnx was modified",
         setup=lambda d: (d / "bundle" / "unet.onnx").write_bytes((d / "bundle" / "unet.onnx").read_bytes()[:-4])),
    Case("verify-truncated-golden", "run", ("verify", B), "golden vectors golden.npz cannot be read",
         setup=lambda d: ((d / "bundle/golden/golden.npz").write_bytes((d / "bundle/golden/golden.npz").read_bytes()[:200]),
                          rehash(d / "bundle", "golden/golden.npz"))),
    Case("verify-golden-without-unet-vectors", "run", ("verify", B), "golden vectors: 4 missing .*unet/in/sample", setup=_drop_golden_unet,
         code=1),
    Case("verify-path-leaves-the-bundle", "run", ("verify", B), "is not a plain relative path inside the bundle",
         setup=_edit(_path("unet", "../../../../etc/passwd"))),
    Case("verify-absolute-path", "run", ("verify", B), "is not a plain relative path inside the bundle",
         setup=_edit(_path("unet", "/etc/passwd"))),
    Case("verify-symlink-out-of-the-bundle", "run", ("verify", B), "leads outside the bundle", setup=_symlink_out),
    Case("verify-swapped-graphs", "run", ("verify", B), "the bundle is damaged or its files were swapped",
         setup=_swap_unet_and_decoder),
    Case("verify-multiple-of-zero", "run", ("verify", B), r"'resolution.multiple_of' must be an integer in 1",
         setup=_edit(lambda m: m["resolution"].update(multiple_of=0))),
    Case("verify-downsample-factor-zero", "run", ("verify", B), r"'latent.downsample_factor' must be an integer ≥ 1",
         setup=_edit(lambda m: m["latent"].update(downsample_factor=0))),
    Case("verify-unet-is-a-number", "run", ("verify", B), r"'components.unet' must be an object",
         setup=_edit(lambda m: m["components"].update(unet=5))),
    Case("verify-no-inputs", "run", ("verify", B), r"'components.unet.inputs' must be an object",
         setup=_edit(lambda m: m["components"]["unet"].update(inputs=[]))),
    Case("verify-text-bundle-without-tokenizer", "run", ("verify", B), "needs a 'tokenizer' entry",
         setup=_edit(lambda m: m.pop("tokenizer"))),
    Case("verify-unknown-guidance-rule", "run", ("verify", B), r"'guidance.rule' must be one of",
         setup=_edit(lambda m: m["guidance"].update(rule="sometimes"))),
    Case("verify-unknown-conditioning", "run", ("verify", B), r"'conditioning.kind' must be one of",
         setup=_edit(lambda m: m["conditioning"].update(kind="telepathy"))),
    Case("verify-bad-scheduler-value", "run", ("verify", B), "'scheduler' cannot be used",
         setup=_edit(lambda m: m["scheduler"].update(beta_schedule="wavy"))),
    Case("verify-infinity-in-manifest", "run", ("verify", B), "Infinity is not a JSON number",
         setup=lambda d: (d / "bundle/manifest.json").write_text(
             (d / "bundle/manifest.json").read_text().replace('"eta": 0.0', '"eta": Infinity'))),
    Case("verify-old-schema", "run", ("verify", B), "unknown bundle schema version 1",
         setup=_edit(lambda m: m.update(schema_version=1))),
    Case("verify-not-a-bundle", "run", ("verify", "{dir}"), "is not a bundle: it has no manifest.json"),
    Case("info-missing", "run", ("info", "{dir}/nope"), "no bundle at"),
    Case("info-edited", "run", ("info", B), "was edited after the build",
         setup=_edit(lambda m: m["latent"].update(scaling_factor=1.0), reseal=False)),
    Case("info-not-a-bundle", "run", ("info", "{dir}"), "is not a bundle"),
]


def _fingerprint(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[rel] = ("dir",)
    return out


@pytest.fixture(scope="module")
def sources(tiny_sd, tiny_bundle):
    return {"model": tiny_sd, "bundle": tiny_bundle}


def test_the_table_is_large_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert {c.args[0] for c in CASES} >= {"build", "calibrate", "parity", "report", "generate", "verify", "info"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, sources, tmp_path, monkeypatch):
    d = tmp_path / "case"
    d.mkdir()
    shutil.copytree(sources["model"], d / "model")
    shutil.copytree(sources["bundle"], d / "bundle")
    if case.setup is not None:
        case.setup(d)
    args = [a.format(model=d / "model", bundle=d / "bundle", dir=d) for a in case.args]
    monkeypatch.chdir(d / case.cwd if case.cwd else tmp_path)
    before = _fingerprint(tmp_path)
    result = CliRunner().invoke(export_cli if case.tool == "export" else run_cli, args, catch_exceptions=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == case.code, (result.exit_code, result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    if case.code == 2:  # exactly one error line, the last one, holding the message
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
        assert re.search(case.match, errors[0]), errors[0]
    else:  # over tolerance: the report says why, and ends in FAIL
        assert re.search(case.match, result.stdout) and result.stdout.strip().endswith("FAIL"), result.stdout
    assert _fingerprint(tmp_path) == before, "the command changed or left files behind"
