"""TensorRT runner: the engine built for this GPU from the component's ONNX graph.

1. Find the engine: ``BUNDLE/engines/<key>/<component>.plan`` whose metadata matches this device
   (TensorRT version, compute capability or compatibility level; :mod:`ldm_runtime.tensorrt.cache`),
   or refuse in one line naming ``ldm-run prepare BUNDLE``.
2. Deserialize it; allocate one device buffer per input and output, sized for the largest shape of
   the engine's optimization profile, once, and bind them (``set_tensor_address``) once.
3. Each call: ``set_input_shape`` and copy the inputs in, ``execute_async_v3`` on the runner's stream,
   copy the outputs out, synchronize. Only inputs and outputs cross to the host.
4. ``low_memory``: the execution context uses the USER_MANAGED allocation strategy with the process's
   one activation block (:func:`~ldm_runtime.tensorrt.memory.shared_arena`), sized to the largest
   engine of the bundle for this device; the pipeline keeps one component resident at a time.

tensorrt and cuda-python are imported when a runner loads, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..bundle import Bundle
from ..errors import BundleError, UserError
from ..tensorrt.imports import require_tensorrt
from .base import PrepareOptions, Runner, RunnerOptions, bundle_manifest, graph_hashes

if TYPE_CHECKING:
    import tensorrt as trt

    from ..tensorrt.memory import DeviceArena, DeviceBuffer


def dims(d: trt.Dims) -> tuple[int, ...]:
    """A ``trt.Dims`` as a tuple (Dims indexes like a sequence but defines no ``__iter__``)."""
    return tuple(int(d[i]) for i in range(len(d)))


def built_refittable(manifest: dict[str, Any]) -> bool:
    """Whether ``ldm-export build --refittable`` made the bundle: ``ldm-run prepare``'s default then."""
    tensorrt = manifest.get("device_constraints", {}).get("tensorrt", {})
    value = tensorrt.get("refittable", False) if isinstance(tensorrt, dict) else None
    if not isinstance(value, bool):
        raise BundleError(f"manifest.json: 'device_constraints.tensorrt.refittable' must be true or false; got "
                          f"{value!r}")
    return value


class TensorRTRunner(Runner):
    backend = "tensorrt"
    OPTIONS = ("cache_dir", "device")

    def __init__(self, name: str, model_path: Path, spec: dict[str, Any], options: RunnerOptions = RunnerOptions(),
                 arena: DeviceArena | None = None):
        super().__init__(name, model_path, spec, options)
        self.low_memory = options.low_memory
        self.cache_dir = Path(options.cache_dir) if options.cache_dir else self.model_path.parent / "engines"
        self.device_index = options.device
        self._arena = arena
        self._runtime: trt.Runtime | None = None   # outlives the engine it deserialized
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._stream: Any = None
        self._buffers: dict[str, DeviceBuffer] = {}
        self._dtypes: dict[str, np.dtype[Any]] = {}
        self._profile: dict[str, dict[str, list[int]]] = {}
        self._weights: dict[str, np.ndarray] = {}   # adapters: the named weights' values to refit
        self._refitted: set[str] = set()            # the names refitted into the loaded engine

    ADAPTER_REFUSAL = None

    @classmethod
    def prepare(cls, bundle: Bundle, options: PrepareOptions, report: Callable[[str], None]) -> list[str]:
        """``ldm-run prepare`` on a TensorRT bundle: this device's engines (:mod:`ldm_runtime.tensorrt.prepare`)."""
        from ..tensorrt.builder import BuildOptions
        from ..tensorrt.prepare import prepare_bundle

        refittable = built_refittable(bundle.manifest) if options.refittable is None else options.refittable
        build = BuildOptions(workspace_bytes=options.workspace_bytes, timing_cache=options.timing_cache,
                             refit="all" if refittable else "none")
        done = prepare_bundle(bundle.root, build, cache_dir=options.cache_dir, manifest=bundle.manifest,
                              force=options.force, report=report)
        return [f"{d.component}: {'reused' if d.reused else 'built'} {d.plan} ({d.seconds:g} s)" for d in done]

    # -- 1. + 2. load ------------------------------------------------------
    def _load(self) -> None:
        try:
            self._load_engine()
        except BaseException:
            self._release()   # what was allocated before the failure
            raise

    def _load_engine(self) -> None:
        require_tensorrt()
        import tensorrt as trt

        from ..tensorrt import cuda
        from ..tensorrt.cache import EngineCache
        from ..tensorrt.device import describe_device
        from ..tensorrt.profiles import bundle_profiles

        device = describe_device(self.device_index)
        cuda.set_device(self.device_index)
        cache = EngineCache(self.cache_dir)
        manifest = bundle_manifest(self.model_path)
        onnx_sha, data_sha = graph_hashes(self.model_path, manifest)
        profiles = bundle_profiles(manifest)[self.name] if manifest is not None else None
        entry = cache.lookup(self.name, onnx_sha, device, str(self.model_path.parent), data_sha, profiles=profiles,
                             refittable=bool(self._weights) or (manifest is not None and built_refittable(manifest)))
        self._runtime = runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(entry.plan.read_bytes())
        if engine is None:
            raise UserError(f"{self.name}: TensorRT could not load {entry.plan} (see its log above); expected an "
                            f"engine for TensorRT {device.tensorrt_version}; try ldm-run prepare "
                            f"{self.model_path.parent} --force")
        self._engine, self._stream = engine, cuda.stream_create()
        self._check_io(engine)
        self._context = self._make_context(engine, cache.max_device_memory(device))
        self._allocate(engine, self._context)
        if self._weights:
            self._refit()

    # -- adapters: refit in place -----------------------------------------
    def swap_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Refit the named weights (the ONNX initializer names, which the ONNX parser gives the engine's
        weights) without rebuilding; weights refitted before and not named now go back to the graph's values."""
        self._weights = {n: np.ascontiguousarray(v) for n, v in weights.items()}
        if self.is_loaded:
            self._refit()

    def _refit(self) -> None:
        import tensorrt as trt

        from ..onnx_weights import initializers

        engine = self._engine
        assert engine is not None
        if not engine.refittable:
            raise UserError(f"{self.name}: this TensorRT engine is not refittable, so adapters cannot be swapped in; "
                            f"rebuild it with --refittable: ldm-run prepare {self.model_path.parent} --refittable "
                            "--force (or ldm-export build --target tensorrt --refittable)")
        values = dict(self._weights)
        restore = self._refitted - set(values)
        if restore:
            graph = initializers(self.model_path)
            values.update({n: np.ascontiguousarray(graph[n].read()) for n in sorted(restore)})
        refitter = trt.Refitter(engine, trt.Logger(trt.Logger.WARNING))
        missing = sorted(set(values) - set(refitter.get_all_weights()))
        if missing:
            raise UserError(f"{self.name}: the engine has no refittable weights named {', '.join(missing[:3])}; "
                            f"rebuild it with ldm-run prepare {self.model_path.parent} --refittable --force")
        for name, value in values.items():   # the arrays stay alive (values) until refit_cuda_engine returns
            if not refitter.set_named_weights(name, trt.Weights(value)):
                raise UserError(f"{self.name}: TensorRT refused weight '{name}' {value.dtype}{list(value.shape)} "
                                "(size or dtype differs from the engine's)")
        if not refitter.refit_cuda_engine():
            raise RuntimeError(f"{self.name}: refit_cuda_engine failed; still missing: {refitter.get_missing_weights()}")
        self._refitted = set(self._weights)

    def _check_io(self, engine: trt.ICudaEngine) -> None:
        import tensorrt as trt

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        expected = {**self.spec["inputs"], **self.spec["outputs"]}
        if sorted(names) != sorted(expected):
            raise BundleError(f"{self.name}: the engine's tensors {sorted(names)} are not the bundle's "
                              f"{sorted(expected)}; rebuild it with ldm-run prepare {self.model_path.parent} --force")
        for n in names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            if dtype != np.dtype(expected[n]["dtype"]):
                raise BundleError(f"{self.name}.{n}: the engine takes {dtype}; expected {expected[n]['dtype']}")
            self._dtypes[n] = dtype
            if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                lo, opt, hi = engine.get_tensor_profile_shape(n, 0)
                self._profile[n] = {"min": list(dims(lo)), "opt": list(dims(opt)), "max": list(dims(hi))}

    def _make_context(self, engine: trt.ICudaEngine, bundle_max: int) -> trt.IExecutionContext:
        import tensorrt as trt

        from ..tensorrt.memory import shared_arena

        if not self.low_memory:
            return engine.create_execution_context()
        context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        size = int(engine.device_memory_size_v2)
        self._arena = self._arena or shared_arena()
        ptr = self._arena.acquire(max(size, bundle_max), self)
        context.set_device_memory(ptr, size)
        return context

    def _allocate(self, engine: trt.ICudaEngine, context: trt.IExecutionContext) -> None:
        """One buffer per tensor for the profile's largest shape; outputs sized by shape inference."""
        from ..tensorrt.memory import DeviceBuffer

        for name, p in self._profile.items():
            if not context.set_input_shape(name, tuple(p["max"])):
                raise RuntimeError(f"{self.name}.{name}: TensorRT refused its own profile's max shape {p['max']}")
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = dims(context.get_tensor_shape(name))
            self._buffers[name] = DeviceBuffer(int(np.prod(shape)) * self._dtypes[name].itemsize)
            if not context.set_tensor_address(name, self._buffers[name].ptr):
                raise RuntimeError(f"{self.name}.{name}: set_tensor_address failed")

    # -- 3. run ------------------------------------------------------------
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..tensorrt import cuda
        from ..tensorrt.profiles import check_shape

        context = self._context
        assert context is not None
        staged = []
        for name, array in feeds.items():
            host = np.ascontiguousarray(array, dtype=self._dtypes[name])
            check_shape(self.name, self._profile, name, host.shape)
            if not context.set_input_shape(name, host.shape):
                raise RuntimeError(f"{self.name}.{name}: set_input_shape{host.shape} failed inside the profile")
            cuda.copy_to_device(self._buffers[name].ptr, host, self._stream)
            staged.append(host)  # alive until the stream is synchronized
        if not context.execute_async_v3(cuda.stream_handle(self._stream)):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (see TensorRT's log above)")
        out = {}
        for name in self.spec["outputs"]:
            out[name] = np.empty(dims(context.get_tensor_shape(name)), dtype=self._dtypes[name])
            cuda.copy_to_host(out[name], self._buffers[name].ptr, self._stream)
        cuda.stream_synchronize(self._stream)
        return out

    # -- release -----------------------------------------------------------
    def _release(self) -> None:
        from ..tensorrt import cuda

        self._context = None   # context, then engine, then runtime: the order TensorRT requires
        self._refitted = set()   # a new engine holds the plan's weights
        self._engine = None
        self._runtime = None
        for b in self._buffers.values():
            b.free()
        self._buffers.clear()
        if self._arena is not None:
            self._arena.release(self)
        if self._stream is not None:
            cuda.stream_destroy(self._stream)
            self._stream = None
