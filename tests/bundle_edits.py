"""Editing a copy of a bundle in tests (torch-free): the manifest, with or without a fresh integrity seal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from ldm_runtime.bundle import INTEGRITY, MANIFEST, integrity_seal, sha256_file


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def write(root: Path, manifest: dict) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))


def edit(root: Path, fn: Callable[[dict], object], *, reseal: bool = True) -> dict:
    """Apply ``fn`` to the manifest of ``root``; ``reseal``: also write a fresh integrity seal (the edit then
    reaches the field validation, as a manifest written by another tool or a bug of ours would)."""
    m = read(root)
    fn(m)
    if reseal:
        m[INTEGRITY] = integrity_seal(m)
    write(root, m)
    return m


def rehash(root: Path, rel: str) -> None:
    """Record the current sha256 of ``rel`` in the manifest (and reseal): a consistent but altered bundle."""
    edit(root, lambda m: m["files"].__setitem__(rel, sha256_file(root / rel)))
