"""The few CUDA runtime calls this backend makes, through cuda-python (no torch, no pycuda).

Every call returns ``(cudaError_t, *values)``; :func:`check` turns a failure into an exception:
no usable GPU or driver and out-of-memory are the user's to fix (:class:`NoCudaDevice`,
:class:`~ldm_runtime.errors.UserError`), anything else is our bug (``RuntimeError``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UserError
from .imports import cudart

# failures that mean "no usable NVIDIA GPU here" (by enum name: the values are cuda-python's business)
NO_DEVICE_ERRORS = ("cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorInvalidDevice",
                    "cudaErrorDevicesUnavailable", "cudaErrorCompatNotSupportedOnDevice")
OUT_OF_MEMORY_ERRORS = ("cudaErrorMemoryAllocation",)


class NoCudaDevice(UserError):
    """CUDA has no usable device: no NVIDIA GPU, no driver, or a driver older than the CUDA runtime."""


def _name(err: Any) -> str:
    return str(getattr(err, "name", err))


def check(result: Any, what: str) -> Any:
    """The value(s) of a cuda-python call, or the exception its error code calls for."""
    err, *values = result if isinstance(result, tuple) else (result,)
    name = _name(err)
    if name != "cudaSuccess":
        if name in NO_DEVICE_ERRORS:
            raise NoCudaDevice(f"no usable NVIDIA GPU: {what} failed with {name}; expected a GPU and a driver "
                               "for this CUDA version; try nvidia-smi, or the onnxruntime backend on CPU")
        if name in OUT_OF_MEMORY_ERRORS:
            raise UserError(f"out of GPU memory: {what} failed with {name}; try --low-memory, a smaller "
                            "resolution, or closing other GPU programs")
        raise RuntimeError(f"CUDA call {what} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def runtime_version() -> str:
    return _version(int(check(cudart().cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")))


def driver_version() -> str:
    return _version(int(check(cudart().cudaDriverGetVersion(), "cudaDriverGetVersion")))


def device_properties(index: int = 0) -> Any:
    """``cudaDeviceProp`` of device ``index`` (raises :class:`NoCudaDevice` when there is none)."""
    rt = cudart()
    count = int(check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount"))
    if index >= count:
        raise NoCudaDevice(f"no CUDA device {index}: this machine has {count}; try --device 0")
    return check(rt.cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")


def set_device(index: int) -> None:
    check(cudart().cudaSetDevice(index), f"cudaSetDevice({index})")


def mem_get_info() -> tuple[int, int]:
    """(free, total) bytes of the current device."""
    free, total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free), int(total)


def malloc(nbytes: int) -> int:
    return int(check(cudart().cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})"))


def free(ptr: int) -> None:
    if ptr:
        check(cudart().cudaFree(ptr), "cudaFree")


def stream_create() -> Any:
    return check(cudart().cudaStreamCreate(), "cudaStreamCreate")


def stream_handle(stream: Any) -> int:
    """The integer handle TensorRT's ``execute_async_v3`` takes."""
    return int(stream)


def stream_synchronize(stream: Any) -> None:
    check(cudart().cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def stream_destroy(stream: Any) -> None:
    check(cudart().cudaStreamDestroy(stream), "cudaStreamDestroy")


def copy_to_device(ptr: int, host: np.ndarray, stream: Any) -> None:
    """Asynchronous host-to-device copy of a C-contiguous array (sync the stream before reusing ``host``)."""
    rt = cudart()
    check(rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync(host to device)")


def copy_to_host(host: np.ndarray, ptr: int, stream: Any) -> None:
    rt = cudart()
    check(rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync(device to host)")
