"""The engine cache: ``engines/<key>/<component>.plan`` and ``<component>.json`` beside it.

The key is the first 20 hex digits of the sha256 of a canonical JSON of everything an engine
depends on (:class:`EngineKey`): the ONNX file's sha256 (and its external weights'), the full
TensorRT version, the target GPU (compute capability, or the hardware-compatibility level when one
is set), the optimization profiles and the builder flags. Change any of them and the key changes, so an engine is never used
for a graph, TensorRT, GPU, profile or flag it was not built for.

Writes are atomic: the plan and then the metadata go to temporary files in the key's folder and are
renamed into place (``os.replace``). The metadata is written last and names the plan's size and
sha256, so an interrupted run leaves either nothing or a temporary file that no lookup reads and the
next write removes. :meth:`EngineCache.lookup` finds the engine of a component whose metadata
matches this device, or raises the one-line refusal that names ``ldm-run prepare``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..errors import UserError
from ..outputs import pid_alive
from .device import DeviceDescription, engine_mismatch, refusal
from .versions import TrtVersion

if TYPE_CHECKING:
    import tensorrt as trt

Plan = Union[bytes, memoryview, "trt.IHostMemory"]   # anything with the buffer protocol
ENGINES_DIR = "engines"
META_SCHEMA = 1
KEY_DIGITS = 20


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; :attr:`digest` names its cache folder."""

    onnx_sha256: str
    external_data_sha256: str | None          # the weights of a graph over 2 GB live beside it
    tensorrt_version: str                     # full version: engines need the exact one
    compute_capability: str                   # "8.7"; ignored when hardware_compatibility_level is set
    hardware_compatibility_level: str = "NONE"
    profiles: list[dict[str, dict[str, list[int]]]] = field(default_factory=list)
    flags: tuple[str, ...] = ()               # builder flag NAMES, e.g. ("REFIT",)

    def fields(self) -> dict[str, Any]:
        """The canonical form that is hashed (the target is the level, or the compute capability)."""
        level = self.hardware_compatibility_level
        target = f"hw:{level}" if level != "NONE" else f"cc:{self.compute_capability}"
        return {"onnx_sha256": self.onnx_sha256, "external_data_sha256": self.external_data_sha256,
                "tensorrt_version": str(TrtVersion.parse(self.tensorrt_version)),
                "target": target, "profiles": self.profiles, "flags": sorted(set(self.flags))}

    @property
    def digest(self) -> str:
        text = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:KEY_DIGITS]


@dataclass(frozen=True)
class CacheEntry:
    key: str
    component: str
    plan: Path
    meta: dict[str, Any]


def atomic_write(path: Path, data: Plan) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class EngineCache:
    """Engines of one bundle (``BUNDLE/engines`` by default, or any folder: ``root``)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, key: str) -> Path:
        return self.root / key

    def write(self, key: EngineKey, component: str, plan: Plan, meta: dict[str, Any]) -> CacheEntry:
        """Store a plan and its metadata atomically; returns the entry."""
        folder = self.folder(key.digest)
        folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries(folder)
        view = memoryview(plan)
        plan_path = folder / f"{component}.plan"
        atomic_write(plan_path, view)
        full = {"schema": META_SCHEMA, "component": component, "key": key.digest, "key_fields": key.fields(),
                **meta, "plan_bytes": view.nbytes, "plan_sha256": hashlib.sha256(view).hexdigest()}
        atomic_write(folder / f"{component}.json", (json.dumps(full, indent=1, sort_keys=True) + "\n").encode())
        return CacheEntry(key.digest, component, plan_path, full)

    def _remove_stale_temporaries(self, folder: Path) -> None:
        for p in folder.glob(".*.tmp-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                p.unlink(missing_ok=True)

    def get(self, key: EngineKey, component: str) -> CacheEntry | None:
        """The complete entry for exactly ``key``, or None (a second ``prepare`` finds its own engines)."""
        return next((e for e in self.entries(component) if e.key == key.digest), None)

    def entries(self, component: str | None = None) -> list[CacheEntry]:
        """Complete entries (metadata present, plan of the recorded size), sorted by key."""
        out: list[CacheEntry] = []
        if not self.root.is_dir():
            return out
        for meta_path in sorted(self.root.glob("*/*.json")):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # not ours, or damaged: never used
            if not isinstance(meta, dict) or meta.get("schema") != META_SCHEMA:
                continue
            plan = meta_path.with_suffix(".plan")
            if component not in (None, meta.get("component")) or meta_path.parent.name != meta.get("key"):
                continue
            if plan.is_file() and plan.stat().st_size == meta.get("plan_bytes"):
                out.append(CacheEntry(meta["key"], meta["component"], plan, meta))
        return out

    def lookup(self, component: str, onnx_sha256: str, device: DeviceDescription, bundle: str,
               external_data_sha256: str | None = None, profiles: list[Any] | None = None,
               refittable: bool = False) -> CacheEntry:
        """The engine of ``component`` built from this ONNX graph (and weights) and with ``profiles`` (the
        bundle's; None: any) that runs on ``device``; refittable engines first when ``refittable`` (adapters
        are to be refitted), else last.

        Raises the refusal naming what the engines were built for when only other devices' engines
        exist, and a one-line "no engine" error when there is none at all."""
        mine = [e for e in self.entries(component) if e.meta.get("onnx_sha256") == onnx_sha256
                and e.meta.get("external_data_sha256") == external_data_sha256
                and (profiles is None or e.meta.get("profiles") == profiles)]
        fits = [e for e in mine if engine_mismatch(e.meta, device) is None]
        if fits:  # the refit mode asked for, then this exact compute capability before a hardware-compatible one
            def rank(e: CacheEntry) -> tuple[bool, bool]:
                refit = bool({"REFIT", "REFIT_INDIVIDUAL"} & set(e.meta.get("flags", [])))
                return refit != refittable, e.meta.get("hardware_compatibility_level", "NONE") != "NONE"

            return sorted(fits, key=rank)[0]
        if mine:
            raise refusal(component, mine[0].meta, device, bundle)
        raise UserError(f"{component}: no TensorRT engine in {self.root} for this graph; expected one built "
                        f"for {device.summary()}; build it with: ldm-run prepare {bundle}")

    def max_device_memory(self, device: DeviceDescription) -> int:
        """The largest activation block any engine here that runs on ``device`` needs (0 if none)."""
        sizes = [int(e.meta.get("device_memory_bytes", 0)) for e in self.entries()
                 if engine_mismatch(e.meta, device) is None]
        return max(sizes, default=0)


def engine_meta(device: DeviceDescription, key: EngineKey, **extra: Any) -> dict[str, Any]:
    """The metadata of an engine built on ``device`` for ``key`` (plus build facts in ``extra``)."""
    return {"onnx_sha256": key.onnx_sha256, "external_data_sha256": key.external_data_sha256,
            "tensorrt_version": device.tensorrt_version,
            "gpu_name": device.gpu_name, "compute_capability": device.compute_capability,
            "hardware_compatibility_level": key.hardware_compatibility_level, "flags": sorted(set(key.flags)),
            "profiles": key.profiles, "built_on": asdict(device), **extra}
