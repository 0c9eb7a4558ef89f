"""The ``tensorrt`` target: TensorRT-ready ONNX graphs, checked for the bundle's minimum TensorRT.

Compiling a component does not build an engine (engines belong to one GPU and TensorRT version:
:mod:`.engines` builds them when this machine can, ``ldm-run prepare`` on the device otherwise). It
checks the graph the device will parse: every node against the ONNX parser of the minimum
TensorRT (:mod:`.opcheck`) and, for quantized graphs, every Q/DQ against TensorRT's explicit
quantization (:mod:`.qdq`); the graph then ships as it is.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from ldm_runtime.tensorrt.versions import MINIMUM, TrtVersion, check_supported

from ldm_runtime.tensorrt.builder import BuildOptions
from ldm_runtime.tensorrt.profiles import bundle_profiles

from ..base import CompileJob, Compiled, Target
from .engines import build_engines, device_constraints
from .opcheck import check_graph
from .qdq import QDQ, require_tensorrt_qdq


def _has_qdq(path: Path) -> bool:
    import onnx

    return any(n.op_type in QDQ for n in onnx.load(str(path), load_external_data=False).graph.node)


class TensorRTTarget(Target):
    name = "tensorrt"
    backend = "tensorrt"
    OPTIONS = ("min_tensorrt", "workspace", "timing_cache", "refittable")

    def __init__(self, min_tensorrt: str | TrtVersion = MINIMUM, workspace: int | None = None,
                 timing_cache: Path | None = None, refittable: bool = False):
        self.min_tensorrt = check_supported(min_tensorrt, "--min-tensorrt")
        self.options = BuildOptions(workspace_bytes=workspace, timing_cache=timing_cache,
                                    refit="all" if refittable else "none")
        self.engines: list[dict[str, Any]] = []   # set by finalize once engines.build_engines has run

    def compile(self, job: CompileJob) -> Compiled:
        path = job.staging / job.onnx_files[0]
        check_graph(path, self.min_tensorrt)
        if _has_qdq(path):
            require_tensorrt_qdq(path)
        return Compiled(list(job.onnx_files))

    def finalize(self, staging: Path, manifest: dict[str, Any], report: Callable[[str], None],
                 bundle_name: str) -> dict[str, Any]:
        """Engines for this machine's GPU when it has TensorRT and one; else one line naming ``ldm-run prepare``."""
        result = build_engines(staging, manifest, self.options, bundle_name=bundle_name, report=report)
        if result.note:
            report(result.note)
        self.engines = result.engines
        constraints = self.device_constraints()
        # the optimization profiles every engine of this bundle is built with (ldm-run prepare derives the same)
        constraints["tensorrt"]["profiles"] = bundle_profiles(manifest)
        return constraints

    def versions(self) -> dict[str, str]:
        import onnx

        try:
            trt = metadata.version("tensorrt")
        except metadata.PackageNotFoundError:
            trt = "not installed at build time"
        return {"onnx": onnx.__version__, "tensorrt": trt, "min_tensorrt": self.min_tensorrt.short}

    def device_constraints(self) -> dict[str, Any]:
        return device_constraints(self.min_tensorrt, self.engines, refittable=self.options.refit != "none")
