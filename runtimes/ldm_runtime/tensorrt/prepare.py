"""``ldm-run prepare BUNDLE``: build (or reuse) every component's engine for this GPU.

For each component of the bundle:

1. the engine key from the component's ONNX (and external weights) sha256, this device's TensorRT
   version and compute capability (or the requested hardware-compatibility level), the component's
   optimization profile (:mod:`.profiles`) and the builder flags;
2. an engine already cached under that key is reused (a second ``prepare`` builds nothing);
3. otherwise :func:`.builder.build_engine` builds it, and the cache stores it atomically.

``python -m ldm_runtime.tensorrt.prepare`` is the same for the build side, which runs it in a
process of its own so that the engine build never shares memory with torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..bundle import read_manifest, sha256_file
from ..errors import UserError
from .builder import BuildOptions, build_engine, builder_flag_names, workspace_bytes
from .cache import ENGINES_DIR, EngineCache, EngineKey, engine_meta
from .device import DeviceDescription, describe_device
from .imports import require_tensorrt
from .profiles import bundle_profiles


@dataclass(frozen=True)
class Prepared:
    component: str
    key: str
    plan: str          # path of the engine
    reused: bool
    seconds: float


def component_key(root: Path, manifest: dict[str, Any], component: str, device: DeviceDescription,
                  options: BuildOptions) -> EngineKey:
    """Step 1: the cache key of ``component`` of the bundle at ``root`` on ``device``."""
    spec = manifest["components"][component]
    onnx = root / spec["file"]
    data = root / spec["external_data"] if spec.get("external_data") else None
    return EngineKey(onnx_sha256=sha256_file(onnx), external_data_sha256=sha256_file(data) if data else None,
                     tensorrt_version=device.tensorrt_version, compute_capability=device.compute_capability,
                     hardware_compatibility_level=options.hardware_compatibility_level,
                     profiles=bundle_profiles(manifest)[component], flags=builder_flag_names(options))


def prepare_bundle(root: str | Path, options: BuildOptions = BuildOptions(), *, cache_dir: Path | None = None,
                   components: tuple[str, ...] = (), device_index: int = 0, manifest: dict[str, Any] | None = None,
                   force: bool = False, report: Callable[[str], None] = print) -> list[Prepared]:
    """Steps 1-3 for every component (or those in ``components``); returns what was built or reused."""
    root = Path(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    names = components or tuple(manifest["components"])
    unknown = sorted(set(names) - set(manifest["components"]))
    if unknown:
        raise UserError(f"the bundle has no component {', '.join(unknown)}; it has "
                        f"{', '.join(manifest['components'])}")
    require_tensorrt()   # the install line first: without TensorRT the GPU question does not matter
    device = describe_device(device_index)
    report(f"preparing TensorRT engines for {device.summary()}")
    cache = EngineCache(cache_dir or root / ENGINES_DIR)
    done = []
    for name in names:
        t0 = time.perf_counter()
        key = component_key(root, manifest, name, device, options)
        entry = None if force else cache.get(key, name)
        reused = entry is not None
        if entry is not None:
            report(f"{name}: reusing engine {key.digest}")
        else:
            built = build_engine(root / manifest["components"][name]["file"], name, key.profiles, options,
                                 device, report)
            entry = cache.write(key, name, built.plan, engine_meta(
                device, key, device_memory_bytes=built.device_memory_bytes, build_seconds=round(built.seconds, 1),
                workspace_bytes=workspace_bytes(options, device), optimization_level=options.optimization_level))
        done.append(Prepared(name, entry.key, str(entry.plan), reused, round(time.perf_counter() - t0, 1)))
    return done


def parse_size(text: str) -> int:
    """'512M', '2G', '1073741824' -> bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        size = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, OverflowError):
        raise UserError(f"size '{text}' is not a number of bytes or NUMBER[K|M|G]; try 1G") from None
    if size <= 0:
        raise UserError(f"size '{text}' must be more than 0 bytes; try 1G")
    return size


def main(argv: list[str] | None = None) -> int:
    """The build side's entry point: prepare engines in this (torch-free) process, print JSON."""
    ap = argparse.ArgumentParser(prog="python -m ldm_runtime.tensorrt.prepare")
    ap.add_argument("bundle")
    ap.add_argument("--manifest", help="a manifest JSON to use instead of BUNDLE/manifest.json")
    ap.add_argument("--workspace", type=parse_size)
    ap.add_argument("--timing-cache", type=Path)
    ap.add_argument("--refittable", choices=("none", "all", "individual"), default="none")
    ap.add_argument("--hardware-compatibility", default="NONE")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    options = BuildOptions(workspace_bytes=args.workspace, timing_cache=args.timing_cache, refit=args.refittable,
                           hardware_compatibility_level=args.hardware_compatibility)
    manifest = json.loads(Path(args.manifest).read_text()) if args.manifest else None
    try:
        done = prepare_bundle(args.bundle, options, manifest=manifest,
                              report=lambda m: print(m, file=sys.stderr, flush=True))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps([asdict(d) for d in done], indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
