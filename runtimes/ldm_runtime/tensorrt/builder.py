"""Build one component's TensorRT engine from its ONNX graph (TensorRT 10.3 … 11.x).

Following TensorRT's developer guide ("The Build Phase"), for one component:

1. a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on 10.x; every
   network is strongly typed on 11.x): precision comes from the graph -- fp16 graphs with fp32
   islands, explicit symmetric Q/DQ -- never from builder flags (FP16/INT8 are gone in 11.x);
2. ``OnnxParser.parse_from_file`` (external weights are read beside the file);
3. the builder config: memory-pool cap on the tactic workspace (``--workspace``: on unified-memory
   devices TensorRT's default is 75 % of the memory shared with the CPU, which gets 8 GB Orin builds
   killed), optimization level, refit flags (REFIT, or REFIT_INDIVIDUAL and
   ``mark_weights_refittable`` for named weights), hardware-compatibility level, one optimization
   profile per entry of ``profiles``, a timing cache loaded from and merged back into
   ``--timing-cache FILE``, and a progress monitor;
4. ``build_serialized_network``; the plan is deserialized once to read the activation memory an
   execution context needs (``device_memory_size_v2``), which the cache metadata records.

Flags are named, never numbered (:func:`builder_flag_names`). Nothing here imports torch; the
build side runs this in a process of its own (:mod:`ldm_export.targets.tensorrt.engines`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UserError
from .device import HW_LEVELS, DeviceDescription
from .imports import require_tensorrt
from .versions import MINIMUM, TrtVersion, check_supported, deprecated, enum_member, has

if TYPE_CHECKING:  # types for mypy only; at run time tensorrt is imported inside the functions
    import tensorrt as trt

Report = Callable[[str], None]
REFIT_MODES = ("none", "all", "individual")
DEFAULT_INTEGRATED_WORKSPACE = 1 << 30   # 1 GiB tactic workspace on unified-memory devices unless --workspace


@dataclass(frozen=True)
class BuildOptions:
    workspace_bytes: int | None = None          # None: 1 GiB on unified memory, TensorRT's default elsewhere
    timing_cache: Path | None = None            # load before and merge into after each build
    refit: str = "none"                         # "none" | "all" (REFIT) | "individual" (REFIT_INDIVIDUAL)
    refit_weights: tuple[str, ...] = ()         # the weights marked refittable with refit="individual"
    hardware_compatibility_level: str = "NONE"  # "NONE" | "AMPERE_PLUS" | "SAME_COMPUTE_CAPABILITY"
    optimization_level: int = 3                 # TensorRT's builder_optimization_level (0 … 5)
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.refit not in REFIT_MODES:
            raise UserError(f"refit mode '{self.refit}' is unknown; expected one of {', '.join(REFIT_MODES)}")
        if self.refit_weights and self.refit != "individual":
            raise UserError("refittable weights were named but refit is not 'individual'; "
                            "try --refittable individual")
        if self.hardware_compatibility_level not in HW_LEVELS:
            raise UserError(f"hardware compatibility level '{self.hardware_compatibility_level}' is unknown; "
                            f"expected one of {', '.join(HW_LEVELS)}")
        if not 0 <= self.optimization_level <= 5:
            raise UserError(f"builder optimization level {self.optimization_level}; expected 0 … 5")


def builder_flag_names(options: BuildOptions) -> tuple[str, ...]:
    """The ``BuilderFlag`` members (by name) a build sets; no precision flags, ever."""
    return {"none": (), "all": ("REFIT",), "individual": ("REFIT_INDIVIDUAL",)}[options.refit]


def workspace_bytes(options: BuildOptions, device: DeviceDescription) -> int | None:
    """The tactic-workspace cap a build uses on ``device`` (None: TensorRT's own default)."""
    if options.workspace_bytes is not None:
        return options.workspace_bytes
    return DEFAULT_INTEGRATED_WORKSPACE if device.integrated else None


def check_build_options(options: BuildOptions, device: DeviceDescription) -> None:
    """Refuse option/device combinations TensorRT documents as unsupported, before a long build."""
    version = check_supported(device.tensorrt_version)
    level = options.hardware_compatibility_level
    if level == "AMPERE_PLUS" and device.integrated:
        raise UserError("hardware compatibility AMPERE_PLUS is not supported on Jetson (integrated GPUs); "
                        "try --hardware-compatibility NONE")
    if level == "SAME_COMPUTE_CAPABILITY" and not has("hardware_compat_same_cc", version):
        raise UserError(f"hardware compatibility SAME_COMPUTE_CAPABILITY needs TensorRT 10.9 or newer; this is "
                        f"{version.short}; try --hardware-compatibility NONE")


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int            # the ONNX graph's size on disk (weights dominate it)
    workspace_bytes: int | None   # tactic workspace cap (None: TensorRT's default, up to the device's memory)
    peak_bytes: int               # rough peak of a build: network copy + plan + workspace
    device_bytes: int

    def line(self, component: str) -> str:
        gib = 2 ** 30
        ws = "TensorRT's default" if self.workspace_bytes is None else f"{self.workspace_bytes / gib:.2f} GiB"
        return (f"{component}: {self.weights_bytes / gib:.2f} GiB of graph weights, tactic workspace {ws}; "
                f"expect a build peak of about {self.peak_bytes / gib:.2f} GiB of {self.device_bytes / gib:.1f} GiB")


def onnx_bytes(onnx_path: Path) -> int:
    """Size of an ONNX component with its external-data file."""
    data = onnx_path.with_name(onnx_path.name + ".data")
    return onnx_path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def estimate_memory(onnx_path: Path, options: BuildOptions, device: DeviceDescription) -> MemoryEstimate:
    """A build holds the parsed network's weights and the plan's at once, plus the tactic workspace."""
    weights = onnx_bytes(onnx_path)
    ws = workspace_bytes(options, device)
    default_ws = (device.total_memory_bytes * 3) // 4 if device.integrated else device.total_memory_bytes // 4
    return MemoryEstimate(weights, ws, 2 * weights + (ws if ws is not None else default_ws),
                          device.total_memory_bytes)


@dataclass
class BuiltEngine:
    plan: trt.IHostMemory         # the serialized engine (buffer protocol)
    device_memory_bytes: int      # activation block one execution context needs
    seconds: float
    flags: tuple[str, ...]


def build_engine(onnx_path: Path, component: str, profiles: list[dict[str, dict[str, list[int]]]],
                 options: BuildOptions, device: DeviceDescription, report: Report) -> BuiltEngine:
    """Build the serialized engine of one component (steps 1-4 of the module docstring)."""
    require_tensorrt()
    import tensorrt as trt

    check_build_options(options, device)
    version = TrtVersion.parse(trt.__version__)
    report(estimate_memory(onnx_path, options, device).line(component))
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # 1. strongly typed network
    strong = not deprecated("strongly_typed_flag", version)   # 11.x: always strongly typed, flag ignored
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    # 2. parse
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise _parse_failure(parser, component, onnx_path, version)
    # 3. config
    config = _builder_config(builder, network, options, device, profiles, report, component)
    # 4. build
    report(f"{component}: building the TensorRT {version.short} engine (this takes minutes)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"{component}: TensorRT could not build the engine (see its log above); on 8 GB Jetson "
                        "boards try --workspace 512M and nothing else running; expected a serialized engine")
    if options.timing_cache is not None:
        _save_timing_cache(config, options.timing_cache)
    del parser, network, config, builder
    device_memory = _device_memory_of(logger, plan)
    seconds = time.perf_counter() - t0
    report(f"{component}: built in {seconds:.0f} s, {plan.nbytes / 2**20:.0f} MiB, "
           f"{device_memory / 2**20:.0f} MiB of activations")
    return BuiltEngine(plan, device_memory, seconds, builder_flag_names(options))


def _parse_failure(parser: trt.OnnxParser, component: str, onnx_path: Path, version: TrtVersion) -> UserError:
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        errors.append(f"node '{e.node_name()}' ({e.node_operator()}): {e.desc()}")
    first = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
    return UserError(f"{component}: TensorRT {version.short}'s ONNX parser refused {onnx_path.name}: {first}; "
                     "try a newer TensorRT, or a bundle built for this minimum TensorRT version")


def _builder_config(builder: trt.Builder, network: trt.INetworkDefinition, options: BuildOptions,
                    device: DeviceDescription, profiles: list[dict[str, dict[str, list[int]]]], report: Report,
                    component: str) -> trt.IBuilderConfig:
    """Step 3: memory cap, level, flags by name, refittable weights, compatibility, profiles, cache."""
    import tensorrt as trt

    config = builder.create_builder_config()
    ws = workspace_bytes(options, device)
    if ws is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, ws)
    config.builder_optimization_level = options.optimization_level
    for name in builder_flag_names(options):
        config.set_flag(_member(trt.BuilderFlag, name))
    # TF32 is on by default on Ampere and newer: fp32 MatMuls and convolutions would round their inputs to a
    # 10-bit mantissa (~1e-3 relative), far outside the fp32 parity tables. Precision comes from the graph,
    # so an fp32 tensor is computed in fp32 (the flag is looked up by name: absent, there is nothing to clear).
    tf32 = enum_member(trt.BuilderFlag, "TF32")
    if tf32 is not None:
        config.clear_flag(tf32)
    for weight in options.refit_weights:
        if not network.mark_weights_refittable(weight):
            raise UserError(f"{component}: no weights named '{weight}' to mark refittable; expected an "
                            "initializer name of the ONNX graph")
    if options.hardware_compatibility_level != "NONE":
        config.hardware_compatibility_level = _member(trt.HardwareCompatibilityLevel,
                                                      options.hardware_compatibility_level)
    for p in profiles:
        profile = builder.create_optimization_profile()
        for name, s in p.items():
            profile.set_shape(name, trt.Dims(s["min"]), trt.Dims(s["opt"]), trt.Dims(s["max"]))
        config.add_optimization_profile(profile)
    if options.timing_cache is not None:
        _load_timing_cache(config, options.timing_cache, report)
    config.progress_monitor = _progress_monitor(component, report)
    return config


def _member(enum: Any, name: str) -> Any:
    """A TensorRT enum member by NAME (the numbers differ between 10.x and 11.x)."""
    import tensorrt as trt

    member = enum_member(enum, name)
    if member is None:
        raise UserError(f"this TensorRT ({trt.__version__}) has no {enum.__name__}.{name}; expected TensorRT "
                        f"{MINIMUM.short} … 11.x; try another --refittable / --hardware-compatibility")
    return member


def _load_timing_cache(config: trt.IBuilderConfig, path: Path, report: Report) -> None:
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        report(f"timing cache {path} was made for another GPU or TensorRT: starting an empty one")
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Merge this build's timings into ``path`` (written atomically)."""
    from .cache import atomic_write

    cache = config.get_timing_cache()
    if path.is_file():
        cache.combine(config.create_timing_cache(path.read_bytes()), False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, memoryview(cache.serialize()))


def _device_memory_of(logger: trt.ILogger, plan: trt.IHostMemory) -> int:
    import tensorrt as trt

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize the engine it has just built")
    return int(engine.device_memory_size_v2)


def _progress_monitor(component: str, report: Report) -> trt.IProgressMonitor:
    """A ``trt.IProgressMonitor`` printing the top-level build phases and every tenth of their steps."""
    import tensorrt as trt

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            if not parent_phase:
                self.steps[phase_name] = num_steps
                report(f"{component}: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            n = self.steps.get(phase_name)
            if n and n >= 10 and (step + 1) % (n // 10) == 0:
                report(f"{component}: {phase_name} {step + 1}/{n}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

    return Progress()
