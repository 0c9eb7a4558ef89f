"""Bundle reading: schema validation, sha256 checks, clear errors for tampered or foreign folders."""

from __future__ import annotations

import json
import shutil

import pytest

from ldm_runtime.bundle import SCHEMA_VERSION, open_bundle, validate_manifest
from ldm_runtime.errors import BundleError


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    return out


def _edit_manifest(root, fn):
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_valid_bundle_opens(tiny_bundle):
    assert open_bundle(tiny_bundle).manifest["schema_version"] == SCHEMA_VERSION


def test_tampered_file_is_refused(bundle_copy):
    with open(bundle_copy / "unet.onnx", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(BundleError, match=r"unet\.onnx was modified: sha256 .* does not match"):
        open_bundle(bundle_copy)
    open_bundle(bundle_copy, check_hashes=False)  # the explicit opt-out still opens it


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "vae_decoder.onnx").unlink()
    with pytest.raises(BundleError, match="bundle file missing: vae_decoder.onnx"):
        open_bundle(bundle_copy)


def test_unknown_schema_version(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(schema_version=2))
    with pytest.raises(BundleError, match="unknown bundle schema version 2; this runtime reads version 1"):
        open_bundle(bundle_copy)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("latent"), "missing key 'latent'"),
    (lambda m: m["latent"].pop("scaling_factor"), "missing key 'latent.scaling_factor'"),
    (lambda m: m["golden"].update(seed="0"), "'golden.seed' has type str"),
    (lambda m: m["components"].pop("unet"), "no 'unet' component"),
    (lambda m: m["components"].update(foo=m["components"]["unet"]), "unknown component 'foo'"),
    (lambda m: m["components"]["unet"]["inputs"]["sample"].update(dtype="float8"), "needs a dtype"),
    (lambda m: m["files"].pop("unet.onnx"), "unet file unet.onnx has no sha256 entry"),
    (lambda m: m.update(guidance=[]), "'guidance' has type list"),
    (lambda m: m["guidance"].update(default_scale="7.5"), "'guidance.default_scale' must be a positive number"),
    (lambda m: m["guidance"].update(default_scale=0), "'guidance.default_scale' must be a positive number"),
])
def test_structural_errors_name_the_key(bundle_copy, edit, match):
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=match):
        open_bundle(bundle_copy)


def test_foreign_folders_and_files(tmp_path):
    with pytest.raises(BundleError, match="no bundle at .*: not a folder"):
        open_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="has no manifest.json"):
        open_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        open_bundle(tmp_path)
    with pytest.raises(BundleError, match="must hold a JSON object"):
        validate_manifest([1, 2])
