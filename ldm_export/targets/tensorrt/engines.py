"""Engines at build time, when this machine can build them, and the manifest's device constraints.

A TensorRT bundle always ships its portable ONNX graphs; engines run only on the TensorRT version
and GPU that built them. So:

1. when TensorRT's Python package is installed and a GPU answers, build the engines for this GPU
   into ``BUNDLE/engines/<key>/`` with the runtime's builder (:mod:`ldm_runtime.tensorrt.prepare`),
   in a process of its own: torch stays out of the building process, which on 8 GB Jetsons is the
   difference between a build and an out-of-memory kill;
2. otherwise build nothing and say so in one line, with the command that builds them on the device;
3. :func:`device_constraints` describes both for the manifest: the minimum TensorRT the graphs
   parse on, and each shipped engine's TensorRT version, GPU, compute capability,
   hardware-compatibility level and flags.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ldm_runtime.errors import UserError
from ldm_runtime.tensorrt.builder import BuildOptions
from ldm_runtime.tensorrt.cache import ENGINES_DIR, EngineCache
from ldm_runtime.tensorrt.versions import MINIMUM, TrtVersion

PREPARE_MODULE = "ldm_runtime.tensorrt.prepare"


@dataclass(frozen=True)
class EngineBuild:
    engines: list[dict[str, Any]] = field(default_factory=list)   # cache metadata of the engines built
    note: str | None = None                                       # why none were built, and what to run


def unavailable_reason() -> str | None:
    """Why engines cannot be built on this machine (None when they can): no TensorRT, no GPU."""
    from ldm_runtime.errors import BackendUnavailable
    from ldm_runtime.tensorrt import cuda
    from ldm_runtime.tensorrt.imports import tensorrt_installed

    if not tensorrt_installed():
        return "TensorRT's Python package is not installed on this machine"
    try:
        cuda.device_properties(0)
    except (cuda.NoCudaDevice, BackendUnavailable) as e:
        return str(e).split(";")[0]
    return None


def prepare_command(options: BuildOptions, staging: Path, manifest_file: Path, result: Path) -> list[str]:
    cmd = [sys.executable, "-m", PREPARE_MODULE, str(staging), "--manifest", str(manifest_file),
           "--json", str(result), "--refittable", options.refit,
           "--hardware-compatibility", options.hardware_compatibility_level]
    if options.workspace_bytes is not None:
        cmd += ["--workspace", str(options.workspace_bytes)]
    if options.timing_cache is not None:
        cmd += ["--timing-cache", str(options.timing_cache)]
    return cmd


def build_engines(staging: Path, manifest: dict[str, Any], options: BuildOptions = BuildOptions(), *,
                  bundle_name: str = "BUNDLE", report: Callable[[str], None] = print) -> EngineBuild:
    """Steps 1-2 for the bundle being assembled in ``staging`` (``manifest``: its manifest so far)."""
    reason = unavailable_reason()
    if reason is not None:
        refit = " (refittable, as recorded in the bundle)" if options.refit != "none" else ""
        return EngineBuild(note=f"no TensorRT engines built: {reason}; the bundle ships TensorRT-ready ONNX "
                                f"graphs; build the engines on the device with: ldm-run prepare {bundle_name}{refit}")
    if options.refit_weights:
        raise UserError("naming refittable weights is a device-side option; use ldm-run prepare --refittable")
    staging = Path(staging)
    manifest_file, result = staging / ".tensorrt-manifest.json", staging / ".tensorrt-prepared.json"
    manifest_file.write_text(json.dumps(manifest))
    try:
        proc = subprocess.Popen(prepare_command(options, staging, manifest_file, result),
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        last = ""
        for line in proc.stderr:
            last = line.rstrip()
            report(last)
        if proc.wait() == 2:
            raise UserError(last.removeprefix("error: "))
        if proc.returncode != 0:
            raise RuntimeError(f"{PREPARE_MODULE} exited with {proc.returncode}: {last}")
        built = {d["component"]: d["key"] for d in json.loads(result.read_text())}
    finally:
        manifest_file.unlink(missing_ok=True)
        result.unlink(missing_ok=True)
    cache = EngineCache(staging / ENGINES_DIR)
    return EngineBuild(engines=[e.meta for e in cache.entries() if built.get(e.component) == e.key])


def device_constraints(min_tensorrt: str | TrtVersion = MINIMUM, engines: list[dict[str, Any]] | None = None,
                       onnx_opset: int | None = None, refittable: bool = False) -> dict[str, Any]:
    """Step 3: the manifest's ``device_constraints`` of a TensorRT bundle."""
    shipped = [{"component": m["component"], "file": f"{ENGINES_DIR}/{m['key']}/{m['component']}.plan",
                "key": m["key"], "tensorrt_version": m["tensorrt_version"], "gpu_name": m["gpu_name"],
                "compute_capability": m["compute_capability"],
                "hardware_compatibility_level": m.get("hardware_compatibility_level", "NONE"),
                "flags": list(m.get("flags", []))} for m in engines or []]
    out: dict[str, Any] = {"tensorrt": {"min_version": TrtVersion.parse(min_tensorrt).short, "engines": shipped,
                                        "other_devices": "ldm-run prepare BUNDLE builds engines for this device",
                                        "refittable": refittable}}
    if onnx_opset is not None:
        out["tensorrt"]["onnx_opset"] = onnx_opset
    return out
