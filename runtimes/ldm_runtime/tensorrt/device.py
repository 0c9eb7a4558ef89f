"""What GPU this is, and whether an engine built elsewhere may run on it.

A :class:`DeviceDescription` is plain data (it travels in engine metadata and manifests), read
through cuda-python by :func:`describe_device`. :func:`engine_mismatch` compares an engine's
metadata with a device by TensorRT's portability rules:

1. the TensorRT version must be the one that built the engine, all four parts (the standard runtime
   refuses any other; version-compatible engines are not built here);
2. hardware compatibility ``NONE``: the compute capability must be the build GPU's;
   ``SAME_COMPUTE_CAPABILITY`` (10.9+): the same; ``AMPERE_PLUS``: compute capability 8.0 or newer
   on a discrete GPU (NVIDIA documents it as unsupported on Jetson).

:func:`refusal` turns a mismatch into the one line the user sees, with the command that fixes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UserError
from .versions import TrtVersion

HW_LEVELS = ("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY")


@dataclass(frozen=True)
class DeviceDescription:
    gpu_name: str
    compute_capability: str          # "8.7"
    total_memory_bytes: int
    integrated: bool                 # unified memory shared with the CPU (Jetson)
    tensorrt_version: str            # full version, e.g. "10.3.0.30"
    cuda_runtime_version: str        # "12.6"
    cuda_driver_version: str         # the newest CUDA version the driver supports, "12.6"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceDescription:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    @property
    def cc(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    def summary(self) -> str:
        kind = ", unified memory" if self.integrated else ""
        return (f"{self.gpu_name} (compute capability {self.compute_capability}, "
                f"{self.total_memory_bytes / 2**30:.1f} GiB{kind}, TensorRT {self.tensorrt_version})")


def describe_device(index: int = 0, tensorrt_version: str | None = None) -> DeviceDescription:
    """This machine's GPU ``index`` through cuda-python, with the installed TensorRT's version
    (or ``tensorrt_version`` when given: a process that must not import TensorRT)."""
    from . import cuda
    from .imports import require_tensorrt

    props = cuda.device_properties(index)
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return DeviceDescription(
        gpu_name=name.split("\x00", 1)[0].strip(),
        compute_capability=f"{props.major}.{props.minor}",
        total_memory_bytes=int(props.totalGlobalMem),
        integrated=bool(props.integrated),
        tensorrt_version=tensorrt_version or require_tensorrt(),
        cuda_runtime_version=cuda.runtime_version(),
        cuda_driver_version=cuda.driver_version(),
    )


def _cc(text: str) -> tuple[int, int]:
    major, minor = str(text).split(".")
    return int(major), int(minor)


def engine_mismatch(meta: dict[str, Any], device: DeviceDescription) -> str | None:
    """Why the engine described by ``meta`` (cache metadata) cannot run on ``device``; None if it can."""
    built, here = TrtVersion.parse(meta["tensorrt_version"]), TrtVersion.parse(device.tensorrt_version)
    if built != here:
        return f"TensorRT {built} built it and this is TensorRT {here}"
    level = meta.get("hardware_compatibility_level", "NONE")
    if level not in HW_LEVELS:
        return f"it has the unknown hardware compatibility level {level!r}"
    if level == "AMPERE_PLUS":
        if device.integrated:
            return "AMPERE_PLUS engines are not supported on integrated GPUs (Jetson)"
        if device.cc < (8, 0):
            return f"AMPERE_PLUS needs compute capability 8.0 or newer and this GPU has {device.compute_capability}"
        return None
    if _cc(meta["compute_capability"]) != device.cc:
        return (f"it needs compute capability {meta['compute_capability']} and this GPU has "
                f"{device.compute_capability}")
    return None


def built_for(meta: dict[str, Any]) -> str:
    level = meta.get("hardware_compatibility_level", "NONE")
    hw = "" if level == "NONE" else f", hardware compatibility {level}"
    return (f"{meta['gpu_name']} (compute capability {meta['compute_capability']}, "
            f"TensorRT {meta['tensorrt_version']}{hw})")


class EngineMismatch(UserError):
    """The bundle's engines were built for another GPU or TensorRT version."""


def refusal(component: str, meta: dict[str, Any], device: DeviceDescription, bundle: str) -> EngineMismatch:
    """The one-line refusal: what the engine was built for, what this device is, and the fix."""
    why = engine_mismatch(meta, device) or "it does not match"
    return EngineMismatch(f"{component}: the TensorRT engine was built for {built_for(meta)}; this device is "
                          f"{device.summary()} ({why}); build engines for this device with: "
                          f"ldm-run prepare {bundle}")
