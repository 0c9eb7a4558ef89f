"""Writing a bundle atomically: build in a staging folder beside the target, rename at the end.

An interrupted or failed build leaves no bundle folder behind (and an existing
bundle is replaced only once the new one is complete).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ldm_runtime.bundle import MANIFEST, SCHEMA_VERSION, sha256_file, validate_manifest
from ldm_runtime.errors import UserError


@contextmanager
def staging_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes ``out``, on any error it is removed."""
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:  # KeyboardInterrupt too: never leave a half bundle
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(out: Path) -> None:
    """Remove staging folders left by builds that were killed outright (SIGKILL, power loss)."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)


def finalize_manifest(staging: Path, manifest: dict) -> dict:
    """Add the sha256 of every file in ``staging``, validate, and write manifest.json."""
    files = {}
    for p in sorted(q for q in staging.rglob("*") if q.is_file()):
        rel = p.relative_to(staging).as_posix()
        p.chmod(0o644)  # onnx writes external data as 0600; a bundle is copied to other users' devices
        if rel != MANIFEST:
            files[rel] = sha256_file(p)
    manifest = {"schema_version": SCHEMA_VERSION, **manifest, "files": files}
    validate_manifest(manifest)  # a manifest we cannot read back is our bug: fail before renaming
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest
