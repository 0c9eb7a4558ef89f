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
from typing import Any

from ldm_runtime.tensorrt.versions import MINIMUM, TrtVersion, check_supported

from ..base import Target
from .engines import device_constraints
from .opcheck import check_graph
from .qdq import QDQ, require_tensorrt_qdq


def _has_qdq(path: Path) -> bool:
    import onnx

    return any(n.op_type in QDQ for n in onnx.load(str(path), load_external_data=False).graph.node)


class TensorRTTarget(Target):
    name = "tensorrt"
    backend = "tensorrt"

    def __init__(self, min_tensorrt: str | TrtVersion = MINIMUM):
        self.min_tensorrt = check_supported(min_tensorrt, "--min-tensorrt")
        self.engines: list[dict[str, Any]] = []   # set by the build once engines.build_engines has run

    def compile(self, staging: Path, component: str, onnx_files: list[str]) -> list[str]:
        path = Path(staging) / onnx_files[0]
        check_graph(path, self.min_tensorrt)
        if _has_qdq(path):
            require_tensorrt_qdq(path)
        return onnx_files

    def versions(self) -> dict[str, str]:
        import onnx

        try:
            trt = metadata.version("tensorrt")
        except metadata.PackageNotFoundError:
            trt = "not installed at build time"
        return {"onnx": onnx.__version__, "tensorrt": trt, "min_tensorrt": self.min_tensorrt.short}

    def device_constraints(self) -> dict[str, Any]:
        return device_constraints(self.min_tensorrt, self.engines)
