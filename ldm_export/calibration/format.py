"""The on-disk format of a calibration set, shared by the writer and the reader (no torch here)."""

from __future__ import annotations

import json
from pathlib import Path

FORMAT = "ldm-export-calibration"
FORMAT_VERSION = 1
MANIFEST = "calibration.json"


def record_key(index: int, name: str) -> str:
    """Key of input ``name`` of record ``index`` in a shard: ``00012/sample``."""
    return f"{index:05d}/{name}"


def parse_key(key: str) -> tuple[int, str]:
    """Inverse of :func:`record_key`; raises ValueError for any other key."""
    index, name = key.split("/", 1)
    return int(index), name


def is_calibration_set(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``ldm-export calibrate`` (its manifest names the format)."""
    try:
        m = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT
