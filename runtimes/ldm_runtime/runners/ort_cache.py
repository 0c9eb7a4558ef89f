"""ONNX Runtime's optimized graphs, saved once per device (``ldm-run prepare`` on an ``onnx`` bundle).

Creating a session optimizes the graph (constant folding, node fusions, layout transforms) every time: for
a Stable Diffusion UNet that is most of the load time. ``prepare`` saves the graph ONNX Runtime optimized
for this machine's provider, and later loads read it with graph optimization off. What ORT wrote is only
valid for the provider and the CPU it optimized for, so the cache key is

    sha256(ONNX file's sha256, external data's sha256, ONNX Runtime version, provider, CPU instruction set)

and a graph from another device is never picked up. Entries are written atomically: a temporary file,
renamed once complete, and a metadata file written last (an entry without it does not exist).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..outputs import atomic_write_text

CACHE_DIR = "engines"                      # beside the bundle's files, shared with TensorRT's engine cache
META = "ort-optimized.json"
# instruction-set extensions the CPU kernels (MLAS) dispatch on
_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve", "i8mm", "bf16")


def cpu_features() -> str:
    """This CPU's architecture and the instruction sets ORT's kernels choose between."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return f"{platform.machine()}:{'+'.join(f for f in _CPU_FLAGS if f in flags) or 'base'}"


@dataclass(frozen=True)
class OrtKey:
    onnx_sha256: str
    external_data_sha256: str | None
    onnxruntime_version: str
    provider: str
    cpu: str

    @property
    def digest(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True)
        return "ort-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def entry(cache: Path, key: OrtKey, component: str) -> Path | None:
    """The cached optimized graph of ``component`` for ``key``, or None."""
    folder = cache / key.digest
    meta = folder / f"{component}.{META}"
    graph = folder / f"{component}.onnx"
    if not (meta.is_file() and graph.is_file()):
        return None
    try:
        if json.loads(meta.read_text())["key"] != key.__dict__:
            return None
    except (ValueError, KeyError):
        return None
    return graph


def write_entry(cache: Path, key: OrtKey, component: str, optimize) -> Path:
    """Run ``optimize(target, data_name)`` (which makes ONNX Runtime write its optimized graph to ``target``,
    its large initializers to ``data_name`` beside it) in a private staging folder, then publish it: the
    data file, the graph, and last the metadata (an entry without its metadata is never read). Whatever
    happens before that, the staging folder is removed, so an interrupted run leaves nothing behind."""
    folder = cache / key.digest
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{component}.partial-", dir=folder))
    graph, data = f"{component}.onnx", f"{component}.onnx.data"
    try:
        optimize(staging / graph, data)
        (folder / f"{component}.{META}").unlink(missing_ok=True)  # an older entry (--force) stops existing first
        if (staging / data).exists():
            os.replace(staging / data, folder / data)
        elif (folder / data).exists():
            (folder / data).unlink()  # a stale file of an earlier run (--force) the new graph does not use
        os.replace(staging / graph, folder / graph)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(folder / f"{component}.{META}", json.dumps({"key": key.__dict__, "component": component},
                                                                  indent=1) + "\n")
    return folder / graph
