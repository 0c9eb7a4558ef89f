"""Reading and validating a bundle: the only contract between build and deploy side.

A bundle is a folder holding ``manifest.json`` (schema documented in
``docs/bundle.md``), one file per compiled component, the tokenizer and the
golden vectors. :func:`open_bundle` checks the schema version, the structure
and the sha256 of every file before anything is run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
COMPONENTS = ("text_encoder", "class_embedder", "unet", "vae_decoder", "vae_encoder")
DTYPES = ("float32", "float16", "int64", "int32")

# Required keys of each manifest section and the JSON type each must have.
_REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "": {"schema_version": int, "family": str, "target": str, "precision": str, "producer": dict,
         "source": dict, "backend": dict, "device_constraints": dict, "latent": dict, "autoencoder": dict,
         "conditioning": dict, "resolution": dict, "scheduler": dict, "components": dict,
         "golden": dict, "files": dict},
    "latent": {"channels": int, "downsample_factor": int, "scaling_factor": (int, float),
               "shift_factor": (int, float)},
    "resolution": {"multiple_of": int, "min": list, "max": list, "default": list, "declared": list},
    "golden": {"file": str, "prompt": str, "negative_prompt": str, "seed": int, "steps": int,
               "guidance_scale": (int, float), "eta": (int, float), "width": int, "height": int},
    "source": {"format": str, "sha256": str},
    "autoencoder": {"kind": str},
    "conditioning": {"kind": str},
}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def validate_manifest(m: Any) -> None:
    """Raise :class:`BundleError` naming the first structural problem of a manifest dict."""
    if not isinstance(m, dict):
        raise BundleError(f"manifest.json must hold a JSON object; got {type(m).__name__}")
    version = m.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"unknown bundle schema version {version!r}; this runtime reads version "
                          f"{SCHEMA_VERSION}; rebuild the bundle or install a matching ldm-runtime")
    for section, keys in _REQUIRED.items():
        obj = m if not section else m[section]
        for key, kind in keys.items():
            if key not in obj:
                raise BundleError(f"manifest.json: missing key '{(section + '.') if section else ''}{key}'")
            if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
                raise BundleError(f"manifest.json: '{(section + '.') if section else ''}{key}' has type "
                                  f"{type(obj[key]).__name__}")
    guidance = m.get("guidance", {})
    if not isinstance(guidance, dict):
        raise BundleError(f"manifest.json: 'guidance' has type {type(guidance).__name__}")
    scale = guidance.get("default_scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
        raise BundleError(f"manifest.json: 'guidance.default_scale' must be a positive number; got {scale!r}")
    for name, comp in m["components"].items():
        if name not in COMPONENTS:
            raise BundleError(f"manifest.json: unknown component '{name}'; expected one of {', '.join(COMPONENTS)}")
        for key in ("file", "inputs", "outputs"):
            if key not in comp:
                raise BundleError(f"manifest.json: component '{name}' lacks '{key}'")
        for io in ("inputs", "outputs"):
            for tensor, spec in comp[io].items():
                if spec.get("dtype") not in DTYPES or not isinstance(spec.get("shape"), list):
                    raise BundleError(f"manifest.json: {name}.{io}.{tensor} needs a dtype in {DTYPES} "
                                      f"and a shape list; got {spec}")
    for required in ("unet", "vae_decoder"):
        if required not in m["components"]:
            raise BundleError(f"manifest.json: the bundle has no '{required}' component")


@dataclass(frozen=True)
class Bundle:
    """A validated bundle folder; ``manifest`` is the parsed manifest.json."""

    root: Path
    manifest: dict

    def path(self, relative: str) -> Path:
        return self.root / relative

    def component(self, name: str) -> dict:
        try:
            return self.manifest["components"][name]
        except KeyError:
            raise BundleError(f"the bundle has no '{name}' component; it has "
                              f"{', '.join(self.manifest['components'])}") from None

    @property
    def has_text_encoder(self) -> bool:
        return "text_encoder" in self.manifest["components"]

    def verify_hashes(self) -> None:
        for rel, digest in self.manifest["files"].items():
            p = self.root / rel
            if not p.is_file():
                raise BundleError(f"bundle file missing: {rel}; the bundle at {self.root} is incomplete")
            actual = sha256_file(p)
            if actual != digest:
                raise BundleError(f"bundle file {rel} was modified: sha256 {actual[:12]}… does not match the "
                                  f"manifest's {digest[:12]}…; rebuild or re-copy the bundle")


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise BundleError(f"no bundle at {root}: not a folder")
    if not path.is_file():
        raise BundleError(f"{root} is not a bundle: it has no {MANIFEST}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e})") from e


def open_bundle(root: str | Path, check_hashes: bool = True) -> Bundle:
    """Open and validate a bundle folder; with ``check_hashes`` every file's sha256 is checked."""
    root = Path(root)
    manifest = read_manifest(root)
    validate_manifest(manifest)
    bundle = Bundle(root=root, manifest=manifest)
    for name, comp in manifest["components"].items():
        for rel in [comp["file"]] + ([comp["external_data"]] if comp.get("external_data") else []):
            if rel not in manifest["files"]:
                raise BundleError(f"manifest.json: {name} file {rel} has no sha256 entry in 'files'")
    if check_hashes:
        bundle.verify_hashes()
    return bundle
