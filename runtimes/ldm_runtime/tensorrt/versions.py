"""TensorRT versions and the API gates between 10.3 and 11.x, in one table.

A serialized engine runs only on the TensorRT version that built it, and the Python API moved
between the versions a deployment meets: JetPack 6.1-6.2 ships TensorRT 10.3, workstations run
10.x or 11.x. Code that calls a gated API asks :func:`has` instead of comparing numbers itself, and
refers to enum members by NAME (:func:`enum_member`), never by value: builder-flag integers differ
between 10.x and 11.x.

Sources of the table: NVIDIA's TensorRT 10.x -> 11.x Python migration reference (removed APIs and
their replacements), the 10.x release notes, Polygraphy's version checks (V2 device-memory APIs
from 10.1) and onnx-tensorrt's changelog (IParserRefitter from 10.0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[.+-].*)?\s*$")


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version: major.minor.patch.build (missing parts are 0)."""

    major: int
    minor: int
    patch: int = 0
    build: int = 0

    @classmethod
    def parse(cls, text: str | TrtVersion) -> TrtVersion:
        if isinstance(text, TrtVersion):
            return text
        m = _VERSION.match(str(text))
        if not m:
            raise UserError(f"TensorRT version '{text}' is not MAJOR.MINOR[.PATCH[.BUILD]]; try e.g. 10.3")
        return cls(*(int(g) if g is not None else 0 for g in m.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}.{self.build}"

    @property
    def short(self) -> str:
        """``major.minor``, the way release notes name a version."""
        return f"{self.major}.{self.minor}"


MINIMUM = TrtVersion(10, 3)  # JetPack 6.1/6.2's TensorRT: the oldest this project builds and runs on


@dataclass(frozen=True)
class ApiGate:
    """An API that exists from ``since`` (inclusive) until ``until`` (the first version without it).

    ``attrs``: the dotted attribute names by which code reaches it (``BuilderFlag.FP16``), so a test
    can prove that no code of ours touches an API some supported version lacks without asking
    :func:`has` first. ``deprecated``: the version from which it still exists but is ignored."""

    api: str
    since: TrtVersion | None = None
    until: TrtVersion | None = None
    attrs: tuple[str, ...] = ()
    deprecated: TrtVersion | None = None
    note: str = ""

    def applies(self, version: TrtVersion) -> bool:
        return (self.since is None or version >= self.since) and (self.until is None or version < self.until)


_10_0, _10_1, _10_9, _11_0 = TrtVersion(10, 0), TrtVersion(10, 1), TrtVersion(10, 9), TrtVersion(11, 0)
_PRECISION_FLAGS = tuple(f"BuilderFlag.{f}" for f in ("FP16", "INT8", "BF16", "FP8", "INT4", "FP4"))
_CALIBRATORS = ("int8_calibrator", "set_calibration_profile", "get_calibration_profile", "set_quantization_flag",
                "IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
                "IInt8LegacyCalibrator")

API_GATES: dict[str, ApiGate] = {
    # -- network creation and precision
    "strongly_typed_flag": ApiGate(
        "NetworkDefinitionCreationFlag.STRONGLY_TYPED", attrs=("NetworkDefinitionCreationFlag.STRONGLY_TYPED",),
        deprecated=_11_0, note="makes a 10.x network strongly typed; 11.0 keeps the flag and ignores it"),
    "always_strongly_typed": ApiGate(
        "every network is strongly typed (behaviour)", since=_11_0, note="precision comes from the graph only"),
    "explicit_batch_flag": ApiGate(
        "NetworkDefinitionCreationFlag.EXPLICIT_BATCH", until=_11_0, attrs=("EXPLICIT_BATCH",),
        deprecated=_10_0, note="ignored since 10.0, gone in 11.0"),
    "precision_flags": ApiGate(
        "BuilderFlag.FP16 / INT8 / BF16 / FP8 / INT4 / FP4", until=_11_0, attrs=_PRECISION_FLAGS,
        note="11.x: fp16 graphs with fp32 islands and explicit Q/DQ instead"),
    "precision_constraint_flags": ApiGate(
        "BuilderFlag.OBEY_PRECISION_CONSTRAINTS / PREFER_PRECISION_CONSTRAINTS", until=_11_0,
        attrs=("OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")),
    "int8_calibrators": ApiGate("IBuilderConfig.int8_calibrator and the IInt8*Calibrator classes", until=_11_0,
                                attrs=_CALIBRATORS, note="11.x: explicit symmetric Q/DQ in the graph"),
    "platform_has_fast_fp16": ApiGate("Builder.platform_has_fast_fp16 / platform_has_fast_int8", until=_11_0,
                                      attrs=("platform_has_fast_fp16", "platform_has_fast_int8")),
    # -- execution-context memory
    "user_managed_allocation": ApiGate(
        "create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED)", since=_10_0,
        attrs=("ExecutionContextAllocationStrategy.USER_MANAGED",)),
    "context_without_device_memory": ApiGate(
        "ICudaEngine.create_execution_context_without_device_memory", until=_11_0,
        attrs=("create_execution_context_without_device_memory",),
        note="use the USER_MANAGED allocation strategy instead (10.0+)"),
    "device_memory_size_v1": ApiGate("ICudaEngine.device_memory_size", until=_11_0, attrs=("device_memory_size",)),
    "device_memory_v2": ApiGate(
        "ICudaEngine.device_memory_size_v2, IExecutionContext.set_device_memory(ptr, size)", since=_10_1,
        attrs=("device_memory_size_v2", "set_device_memory")),
    # -- refit
    "refit_flag": ApiGate("BuilderFlag.REFIT, trt.Refitter", attrs=("BuilderFlag.REFIT", "Refitter")),
    "refit_individual": ApiGate("BuilderFlag.REFIT_INDIVIDUAL, INetworkDefinition.mark_weights_refittable",
                                since=_10_0, attrs=("REFIT_INDIVIDUAL", "mark_weights_refittable")),
    "onnx_parser_refitter": ApiGate("OnnxParserRefitter (refit an engine from an ONNX file)", since=_10_0,
                                    attrs=("OnnxParserRefitter",)),
    # -- builder
    "progress_monitor": ApiGate("IBuilderConfig.progress_monitor, trt.IProgressMonitor", since=_10_0,
                                attrs=("IProgressMonitor", "progress_monitor")),
    "hardware_compat_ampere_plus": ApiGate(
        "HardwareCompatibilityLevel.AMPERE_PLUS", attrs=("AMPERE_PLUS",),
        note="documented as unsupported on Jetson (integrated GPUs)"),
    "hardware_compat_same_cc": ApiGate("HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY", since=_10_9,
                                       attrs=("SAME_COMPUTE_CAPABILITY",)),
}


def has(gate: str, version: str | TrtVersion) -> bool:
    """Whether API ``gate`` (a key of :data:`API_GATES`) exists in TensorRT ``version``."""
    return API_GATES[gate].applies(TrtVersion.parse(version))


def gates_for(version: str | TrtVersion) -> dict[str, bool]:
    """Every gate of :data:`API_GATES` evaluated for ``version``."""
    v = TrtVersion.parse(version)
    return {name: g.applies(v) for name, g in API_GATES.items()}


def deprecated(gate: str, version: str | TrtVersion) -> bool:
    """Whether API ``gate`` still exists in ``version`` but is ignored there."""
    g = API_GATES[gate]
    return g.deprecated is not None and TrtVersion.parse(version) >= g.deprecated and g.applies(
        TrtVersion.parse(version))


def enum_member(enum: Any, name: str) -> Any | None:
    """``enum.NAME`` of a TensorRT enum, or None when this TensorRT does not have it (never by number)."""
    return getattr(enum, name, None)


def check_supported(version: str | TrtVersion, what: str = "this TensorRT") -> TrtVersion:
    """Refuse TensorRT versions older than :data:`MINIMUM` in one line."""
    v = TrtVersion.parse(version)
    if v < MINIMUM:
        raise UserError(f"{what} is TensorRT {v}; expected {MINIMUM.short} or newer (JetPack 6.1+ ships 10.3); "
                        "try upgrading TensorRT, or the onnxruntime backend")
    return v
