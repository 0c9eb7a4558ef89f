"""The ``onnx`` target: portable ONNX graphs for ONNX Runtime.

The graphs ship as exported (already constant-folded by the exporter). ONNX
Runtime applies its graph optimizations (ORT_ENABLE_ALL: node fusions, layout
transforms) when a session is created, for whichever execution provider the
device has; baking them in offline would tie the bundle to one provider.
"""

from __future__ import annotations

from .base import CompileJob, Compiled, Target


class OnnxTarget(Target):
    name = "onnx"
    backend = "onnxruntime"

    def compile(self, job: CompileJob) -> Compiled:
        return Compiled(list(job.onnx_files))

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime

        return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
