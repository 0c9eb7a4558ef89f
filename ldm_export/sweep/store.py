"""Finished tasks of a sweep, on disk: what ``--resume`` continues from.

A folder beside the command's output (``.<out>.tasks``): ``sweep.json`` (what the sweep is: its arguments
and task keys, so a resume with other arguments is refused) and one ``<key>.npz`` per finished task (its
arrays and its JSON entry), each written atomically, so a task is either all there or absent. The folder is
removed once the command has written its output.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from ldm_runtime.errors import UserError
from ldm_runtime.jsonio import dumps

Result = tuple[dict, dict[str, np.ndarray]]   # a task's JSON entry and its arrays
IDENTITY = "sweep.json"
_META = "__entry__"


def store_folder(out: Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.tasks"


def state_root() -> Path:
    """Where a sweep without an output folder (parity, report) keeps its finished tasks until it ends (for
    --resume): $LDM_EXPORT_STATE, else ~/.cache/ldm-export/sweeps."""
    env = os.environ.get("LDM_EXPORT_STATE")
    return Path(env) if env else Path.home() / ".cache" / "ldm-export" / "sweeps"


def state_folder(kind: str, identity: dict) -> Path:
    """The folder of one such sweep under :func:`state_root`, named by a hash of what it compares."""
    import hashlib

    return state_root() / f"{kind}-{hashlib.sha256(dumps(identity).encode()).hexdigest()[:16]}"


def _plain(obj):
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class TaskStore:
    """The finished tasks of the sweep ``identity`` in ``folder``. Without ``resume`` the folder must not hold
    an earlier sweep's tasks (they are the user's work: never dropped silently)."""

    def __init__(self, folder: Path, identity: dict, resume: bool):
        self.folder = Path(folder)
        text = dumps(identity, sort_keys=True, indent=1) + "\n"
        previous = self.folder / IDENTITY
        if previous.is_file():
            if not resume:
                raise UserError(f"{self.folder} holds {len(self.done())} finished tasks of an interrupted run; "
                                "pass --resume to continue it, or delete that folder to start over")
            if previous.read_text(encoding="utf-8") != text:
                raise UserError(f"--resume: the interrupted run in {self.folder} had other arguments (or another "
                                "model); rerun it with the same ones, or delete that folder to start over")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = previous.with_name(f".{IDENTITY}.partial-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, previous)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def done(self) -> set[str]:
        return {p.name[:-4] for p in self.folder.glob("*.npz") if not p.name.startswith(".")}

    def put(self, key: str, result: Result) -> None:
        entry, arrays = result
        if _META in arrays:
            raise ValueError(f"array name {_META} is reserved")
        tmp = self.folder / f".{key}.partial-{os.getpid()}.npz"
        # Python's own JSON (Infinity, NaN kept): an identical image's PSNR is inf, and must read back as one.
        meta = np.frombuffer(json.dumps(entry, sort_keys=True, default=_plain).encode("utf-8"), np.uint8)
        with open(tmp, "wb") as f:
            np.savez(f, **{_META: meta}, **arrays)
        os.replace(tmp, self._path(key))

    def get(self, key: str) -> Result:
        with np.load(self._path(key), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != _META}
            entry = json.loads(z[_META].tobytes().decode("utf-8"))
        return entry, arrays

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
