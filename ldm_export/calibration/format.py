"""The on-disk format of a calibration set, shared by the writer and the reader (no torch here)."""

from __future__ import annotations

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
