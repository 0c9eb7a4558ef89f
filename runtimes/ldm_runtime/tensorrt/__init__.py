"""TensorRT deploy side: engines built on (or for) this GPU from the bundle's portable ONNX graphs.

Torch-free. ``tensorrt`` and cuda-python are imported lazily, only by the functions that need
them (:mod:`.imports`); everything else here -- versions, profiles, the engine cache and its key,
the device comparison -- is plain data and runs anywhere. See docs/tensorrt.md.
"""
