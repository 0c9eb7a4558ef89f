"""Reading and validating a bundle: the only contract between build and deploy side.

A bundle is a folder holding ``manifest.json`` (schema documented in ``docs/bundle.md``), one file per
compiled component, the tokenizer and the golden vectors. :func:`open_bundle` checks, before anything
runs:

1. the schema version, and the manifest's integrity seal (a hash of its canonical content written by
   the build: an edited manifest is refused, naming the sections that changed);
2. every field the runtime reads (:mod:`ldm_runtime.schema`);
3. every path the manifest names: relative, normalized, inside the bundle (no ``..``, no absolute path,
   no symlink leading out), and listed in ``files`` (a folder such as a Core ML ``.mlpackage``: every file
   in it, and nothing else in it);
4. the sha256 of every file in ``files``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from . import schema
from .errors import BundleError

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
INTEGRITY = "integrity"
COMPONENTS = schema.COMPONENTS
DTYPES = schema.DTYPES


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_sha256(value: Any) -> str:
    """sha256 of ``value``'s canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def integrity_seal(manifest: dict) -> dict:
    """The manifest's ``integrity`` entry: a hash of everything else, and one per top-level section (so
    the reader can say which section was edited)."""
    body = {k: v for k, v in manifest.items() if k != INTEGRITY}
    return {"sha256": canonical_sha256(body), "sections": {k: canonical_sha256(v)[:16] for k, v in body.items()}}


def check_integrity(manifest: dict) -> None:
    seal = manifest.get(INTEGRITY)
    if not isinstance(seal, dict) or not isinstance(seal.get("sections"), dict):
        raise BundleError("manifest.json has no integrity seal: it was not written by `ldm-export build`; rebuild "
                          "the bundle")
    want = integrity_seal(manifest)
    if seal.get("sha256") == want["sha256"]:
        return
    was, now = seal["sections"], want["sections"]
    changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
    named = ", ".join(f"'{k}'" for k in changed[:5]) + (" …" if len(changed) > 5 else "")
    raise BundleError(f"manifest.json was edited after the build (changed: {named or 'its seal'}); every image "
                      "would differ from the one the bundle was built and verified with; rebuild the bundle or "
                      "restore its manifest.json")


def validate_manifest(m: Any) -> None:
    """Raise :class:`BundleError` naming the first problem of a manifest dict (version, then every field)."""
    if not isinstance(m, dict):
        raise BundleError(f"manifest.json must hold a JSON object; got {type(m).__name__}")
    version = m.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"unknown bundle schema version {version!r}; this runtime reads version "
                          f"{SCHEMA_VERSION}; rebuild the bundle or install a matching ldm-runtime")
    schema.validate(m)


def inside(root: Path, rel: str, where: str) -> Path:
    """``root / rel`` for a manifest path that stays inside the bundle, or a one-line BundleError."""
    p = PurePosixPath(rel)
    if (not p.parts or rel.startswith("/") or "\\" in rel or ":" in p.parts[0]  # "." has no parts
            or any(part in ("", ".", "..") for part in p.parts) or str(p) != rel):
        raise BundleError(f"manifest.json: '{where}' = {rel!r} is not a plain relative path inside the bundle")
    full = root / rel
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(full))
    if real != real_root and real_root not in real.parents:
        raise BundleError(f"manifest.json: '{where}' = {rel!r} leads outside the bundle (through a link)")
    return full


def manifest_paths(m: dict) -> dict[str, str]:
    """Every path the runtime opens, by the manifest field that names it."""
    paths = {"golden.file": m["golden"]["file"]}
    if "tokenizer" in m:
        paths["tokenizer.file"] = m["tokenizer"]["file"]
    for name, comp in m["components"].items():
        paths[f"components.{name}.file"] = comp["file"]
        if comp.get("external_data"):
            paths[f"components.{name}.external_data"] = comp["external_data"]
        for i, chunk in enumerate(comp.get("chunks", [])):
            paths[f"components.{name}.chunks[{i}].file"] = chunk["file"]
    return paths


def _listed(root: Path, rel: str, where: str, files: dict) -> None:
    """A manifest path has a sha256 in ``files``; a folder (a Core ML ``.mlpackage``) has one for every file in
    it, and nothing in it that is not listed (a file added to a package would change what the device runs)."""
    if rel in files:
        return
    under = {f for f in files if f.startswith(rel + "/")}
    if not under:
        raise BundleError(f"manifest.json: '{where}' = {rel!r} has no sha256 entry in 'files'")
    full = root / rel
    if full.is_dir():
        extra = sorted(str(p.relative_to(root).as_posix()) for p in full.rglob("*") if p.is_file()
                       and p.relative_to(root).as_posix() not in under)
        if extra:
            raise BundleError(f"bundle folder {rel} holds {extra[0]}, which the manifest does not list; "
                              f"rebuild or re-copy the bundle")


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

    def component_files(self, name: str) -> list[str]:
        """The bundle files of component ``name`` (its graph, external data, or every file of its packages)."""
        comp = self.component(name)
        paths = [comp["file"], comp.get("external_data"), *(c["file"] for c in comp.get("chunks", []))]
        return [f for f in self.manifest["files"] if any(p and (f == p or f.startswith(p + "/")) for p in paths)]

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
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{path} is not valid JSON ({e})") from e


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def open_bundle(root: str | Path, check_hashes: bool = True) -> Bundle:
    """Open and validate a bundle folder; with ``check_hashes`` every file's sha256 is checked."""
    root = Path(root)
    manifest = read_manifest(root)
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        validate_manifest(manifest)  # the version message
    check_integrity(manifest)
    validate_manifest(manifest)
    for rel in manifest["files"]:
        inside(root, rel, f"files.{rel}")
    for where, rel in manifest_paths(manifest).items():
        inside(root, rel, where)
        _listed(root, rel, where, manifest["files"])
    bundle = Bundle(root=root, manifest=manifest)
    if check_hashes:
        bundle.verify_hashes()
    return bundle
