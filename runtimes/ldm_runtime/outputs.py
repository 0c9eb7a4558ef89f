"""Files a command writes: checked before any work, written atomically, never left half-written.

:func:`check_output_file` refuses up front what could not be written at the end (an unknown format, a
missing or read-only folder, a folder where a file is wanted), so no work is lost to a bad ``--out``.
:func:`atomic_write` writes to a temporary file beside the target and renames it over the target only once
complete; a failure (a full disk, say) removes the temporary file and says so in one line.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

from .errors import UserError, one_line

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no room: the disk, a quota, a file-size limit
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF"}


def check_output_file(path: str | Path, what: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """``path`` as a file this command may write, or a one-line :class:`UserError` naming ``what`` (the option)."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"{what} {path}: unknown file type {path.suffix or '(no extension)'!r}; use one of "
                        f"{', '.join(suffixes)}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{what} {path}: the folder {parent} does not exist; create it first")
    if not _can_write_in(parent) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{what} {path}: cannot write in {parent} (read-only or permission denied)")
    return path


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: tried, since permission bits do not tell for root or
    for read-only file systems."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".ldm-write-check-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def check_output_folder_parent(path: str | Path, what: str) -> Path:
    """A folder the command will create (atomically, beside its final place): its parent must be writable."""
    path = Path(path)
    parent = path.absolute().parent
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder")
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir() or not _can_write_in(existing):
        raise UserError(f"{what} {path}: cannot write in {existing} (read-only or permission denied)")
    return path


def write_failure(path: Path, exc: OSError) -> UserError:
    """The one line for an OSError while writing ``path``."""
    if exc.errno in FULL:
        return UserError(f"cannot write {path}: the disk is full (or a file-size limit was reached); nothing was "
                         "written; free some space and run the command again")
    return UserError(f"cannot write {path}: {one_line(exc, with_type=False)}; nothing was written")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``; on any failure the
    temporary file is removed and ``path`` is untouched (an OSError becomes a one-line UserError)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise write_failure(path, e) from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a staging folder named after a live process is still being written)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, as another user's
        return True
    return True
