"""The ``tensorrt`` compile target (build side): graph checks for the device's ONNX parser, engines
when this machine has TensorRT and a GPU, and the manifest's device constraints. The device side is
:mod:`ldm_runtime.tensorrt`. See docs/tensorrt.md."""
