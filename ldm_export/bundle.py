"""Writing a bundle (or a calibration set) atomically: build in a staging folder beside the target, rename
at the end.

An interrupted or failed build leaves no bundle folder behind, and an existing one is replaced only once
the new one is complete. ``--overwrite`` replaces only what this tool wrote: a folder that is itself a
bundle (or, for ``ldm-export calibrate``, a calibration set); never the current folder or one holding it,
never the source model or a folder that holds it or lies inside it, never anything else.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ldm_runtime.bundle import INTEGRITY, MANIFEST, SCHEMA_VERSION, integrity_seal, sha256_file, validate_manifest
from ldm_runtime.errors import UserError
from ldm_runtime.jsonio import dumps
from ldm_runtime.outputs import FULL, check_output_folder_parent, pid_alive, write_failure
from ldm_runtime.runners.ort_cache import CACHE_DIR


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``ldm-export build`` (a manifest with a schema version)."""
    try:
        m = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and isinstance(m.get("schema_version"), int) and isinstance(m.get("files"), dict)


def check_replaceable(out: Path, overwrite: bool, *, kind: str, is_kind: Callable[[Path], bool],
                      protected: Iterable[Path] = ()) -> None:
    """Refuse, in one line, an ``--out`` this command may not write: one that exists without ``--overwrite``,
    or that ``--overwrite`` may not replace (see the module docstring). ``kind`` names what may be replaced
    ("bundle", "calibration set") and ``is_kind`` recognises it; ``protected`` are the command's inputs."""
    out = Path(out)
    check_output_folder_parent(out, "--out")
    target = Path(os.path.realpath(out))
    cwd = Path(os.path.realpath(Path.cwd()))
    if target == cwd or target in cwd.parents:
        raise UserError(f"--out {out} is the current folder or holds it; write the {kind} to a new folder")
    for p in protected:
        src = Path(os.path.realpath(p))
        if target == src or target in src.parents or src in target.parents:
            raise UserError(f"--out {out} would overlap the input {p}; write the {kind} to a separate folder")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    if out.is_symlink() or not out.is_dir() or not is_kind(out):
        raise UserError(f"{out} exists and is not an ldm-export {kind}; --overwrite replaces only a {kind}: "
                        "choose another --out")


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes ``out`` (replacing the old one, checked by
    :func:`check_replaceable`), on any error it is removed. A full disk is one line."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if e.errno in FULL:
            raise write_failure(out, e) from e
        raise
    except BaseException:  # KeyboardInterrupt too: never leave a half bundle
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    """Remove staging folders left by builds that were killed outright (SIGKILL, power loss)."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)


def finalize_manifest(staging: Path, manifest: dict) -> dict:
    """Add the sha256 of every file in ``staging`` and the integrity seal, validate, write manifest.json.

    The device cache (``engines/``: TensorRT engines built here, what ``ldm-run prepare`` adds) is not listed:
    the device rewrites it (``prepare --force``), and each entry carries its own sha256 and key."""
    files = {}
    for p in sorted(q for q in staging.rglob("*") if q.is_file()):
        rel = p.relative_to(staging).as_posix()
        p.chmod(0o644)  # onnx writes external data as 0600; a bundle is copied to other users' devices
        if rel != MANIFEST and not rel.startswith(f"{CACHE_DIR}/"):
            files[rel] = sha256_file(p)
    manifest = json.loads(dumps({"schema_version": SCHEMA_VERSION, **manifest, "files": files}))
    manifest[INTEGRITY] = integrity_seal(manifest)
    validate_manifest(manifest)  # a manifest we cannot read back is our bug: fail before renaming
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return manifest
