"""ONNX Runtime runner. onnxruntime is imported here only, when a runner is made."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, BundleError, UserError, one_line
from .base import PrepareOptions, Runner, RunnerOptions, bundle_manifest, graph_hashes

# Preferred execution providers, best first; the first one installed wins.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider",
                       "CPUExecutionProvider")
PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "coreml": "CoreMLExecutionProvider", "cpu": "CPUExecutionProvider"}


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable("the ONNX Runtime backend (package 'onnxruntime')", "onnxruntime") from e
    return onnxruntime


def resolve_providers(requested: str | None = None) -> list[str]:
    """Map ``--provider`` (an alias such as 'cuda' or a full ORT name) to a provider list.

    Without a request, the installed providers in PROVIDER_PREFERENCE order.
    CPU is always appended as the fallback ORT needs for unsupported nodes.
    """
    available = _ort().get_available_providers()
    if requested is None:
        chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    else:
        name = PROVIDER_ALIASES.get(requested.lower(), requested)
        if name not in available:
            raise UserError(f"execution provider '{requested}' is not available; installed: "
                            f"{', '.join(available)}; try --provider cpu")
        chosen = [name]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def tensorrt_ep_options(profile: dict[str, dict[str, list[int]]] | None, cache: Path) -> dict[str, str]:
    """ONNX Runtime's TensorRT execution provider options for one component: its optimization profile (the
    bundle's, as ``ldm-run prepare`` builds TensorRT engines with: ``trt_profile_min/opt/max_shapes``, so the
    EP builds one engine for every declared size instead of rebuilding whenever a shape changes), and its
    engine and timing caches under ``cache`` (kept between runs; the EP keys the engines itself)."""
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache / "ort-tensorrt"),
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache / "ort-tensorrt")}
    if profile:
        for kind in ("min", "opt", "max"):
            options[f"trt_profile_{kind}_shapes"] = ",".join(
                f"{name}:{'x'.join(str(d) for d in p[kind])}" for name, p in sorted(profile.items()))
    return options


_malloc_trim = None


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it in the process otherwise).

    A released session's weights, its arena and the parsed model file go back to malloc, and glibc
    keeps most of that mapped, so without this the next component loads on top of the last one's
    leftovers. A no-op where glibc's ``malloc_trim`` does not exist (macOS, Windows, musl).
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32"}


def _load_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ONNX Runtime raises for a file it cannot load (its own types, and OSError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NoModel", "EPFail",
             "NotImplemented")
    return (OSError, *(getattr(state, n) for n in names if hasattr(state, n)))


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"
    OPTIONS = ("provider", "cache_dir")

    def __init__(self, name, model_path, spec, options: RunnerOptions = RunnerOptions()):
        super().__init__(name, model_path, spec, options)
        self.providers = resolve_providers(options.provider)
        self.threads = options.threads
        self.low_memory = options.low_memory
        self._session = None
        self._weights: dict[str, np.ndarray] = {}   # adapters: initializer name → value at session creation
        self._external: list = []                   # OrtValues of swapped external-data weights (kept alive)

    ADAPTER_REFUSAL = None

    def swap_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Adapters: the named initializers take these values when the session is created, so a swap re-creates
        the session. Every name, shape and dtype is checked against the graph first (ONNX Runtime would ignore
        an unknown name silently)."""
        from ..onnx_weights import initializers

        graph = initializers(self.model_path)
        for name, value in weights.items():
            init = graph.get(name)
            if init is None or init.shape != value.shape or init.dtype != value.dtype:
                want = f"{init.dtype}{list(init.shape)}" if init is not None else "no such initializer"
                raise UserError(f"{self.name}: weight '{name}' {value.dtype}{list(value.shape)} does not fit the "
                                f"graph ({want})")
        self._weights = {n: np.ascontiguousarray(v) for n, v in weights.items()}
        if self.is_loaded:
            self.release()
            self.load()

    def _patched_model(self, options):
        """The graph's bytes with the swapped weights written over their initializers' bytes (same size: the
        graph is otherwise the file's, so the optimizer sees what it always sees; ``add_initializer`` is not
        used for these because ORT_ENABLE_ALL ignored it on fp16 graphs, measured with ORT 1.32). Weights in
        an external-data file go through ``add_external_initializers``."""
        from ..onnx_weights import initializers

        graph = initializers(self.model_path)
        data = bytearray(self.model_path.read_bytes())
        external = {}
        for name, value in self._weights.items():
            init = graph[name]
            raw = value.astype(init.dtype.newbyteorder("<")).tobytes()
            if init.file == self.model_path and init.packed in ("raw", "float32") and len(raw) == init.length:
                data[init.offset:init.offset + init.length] = raw
            else:
                external[name] = value
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(self.model_path.parent))
        if external:
            ort = _ort()
            self._external = [ort.OrtValue.ortvalue_from_numpy(v) for v in external.values()]
            options.add_external_initializers(list(external), self._external)
        return bytes(data)

    def session_options(self, optimize: bool = True):
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        if self.low_memory:
            # Keep the arena but plan no memory pattern. With a pattern, the first run fills the arena
            # with per-tensor chunks and the second allocates the whole planned block on top of them
            # (the arena never shrinks), so the peak holds two runs' activations: +0.16 GiB for the
            # SD-1.x UNet at 256x256. Without an arena, malloc churn peaks higher still (+0.2 GiB).
            # The session, arena included, is released after its stage in low-memory mode anyway.
            options.enable_mem_pattern = False
        return options

    def cache_key(self):
        """This component's key in the optimized-graph cache (:mod:`.ort_cache`) for the first provider."""
        from .ort_cache import OrtKey, cpu_features

        onnx_sha, data_sha = graph_hashes(self.model_path)
        return OrtKey(onnx_sha, data_sha, _ort().__version__, self.providers[0], cpu_features())

    def _cached_graph(self) -> Path | None:
        """The graph ``ldm-run prepare`` optimized for this device, when there is one (and a manifest to key it)."""
        from .ort_cache import CACHE_DIR, entry

        if not (self.model_path.parent / "manifest.json").is_file():
            return None
        return entry(self.options.cache_dir or self.model_path.parent / CACHE_DIR, self.cache_key(), self.name)

    def _load(self) -> None:
        ort = _ort()
        cached = None if self._weights else self._cached_graph()  # an optimized graph may have folded them
        options = self.session_options(optimize=cached is None)
        source = self._patched_model(options) if self._weights else str(cached or self.model_path)
        try:
            self._session = ort.InferenceSession(source, options, providers=self._provider_entries())
        except _load_errors() as e:  # the file, not our code: an invalid or foreign graph, a provider that fails
            raise BundleError(f"{self.name}: ONNX Runtime could not load {self.model_path.name}: "
                              f"{one_line(e, with_type=False)}") from e
        if self.low_memory:
            trim_heap()  # the parsed model file (weights stored inline) is garbage once the session exists
        self._check_graph_io()
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _provider_entries(self) -> list:
        """The providers as ONNX Runtime takes them; the TensorRT EP with this component's profile and caches."""
        if self.providers[0] != "TensorrtExecutionProvider":
            return self.providers
        from ..tensorrt.profiles import component_profile
        from .ort_cache import CACHE_DIR

        manifest = bundle_manifest(self.model_path)
        profile = component_profile(manifest, self.name) if manifest is not None else None
        cache = self.options.cache_dir or self.model_path.parent / CACHE_DIR
        return [("TensorrtExecutionProvider", tensorrt_ep_options(profile, Path(cache))), *self.providers[1:]]

    def _check_graph_io(self) -> None:
        """The graph's inputs and outputs are the ones the manifest says (a swapped file is caught here)."""
        for kind, actual, wanted in (("inputs", self._session.get_inputs(), self.spec["inputs"]),
                                     ("outputs", self._session.get_outputs(), self.spec["outputs"])):
            got = {a.name: (_ORT_TYPES.get(a.type, a.type), len(a.shape)) for a in actual}
            want = {k: (v["dtype"], len(v["shape"])) for k, v in wanted.items()}
            if got != want:
                raise BundleError(f"{self.name}: {self.model_path.name} has {kind} "
                                  f"{', '.join(f'{k} {t}[{r}]' for k, (t, r) in sorted(got.items()))} but the "
                                  f"manifest says {', '.join(f'{k} {t}[{r}]' for k, (t, r) in sorted(want.items()))}; "
                                  "the bundle is damaged or its files were swapped: rebuild or re-copy it")

    @classmethod
    def prepare(cls, bundle, options: PrepareOptions, report) -> list[str]:
        """``ldm-run prepare`` on an ONNX bundle: each component's graph optimized by ONNX Runtime for this
        machine's provider, saved in the cache, so that later loads skip the optimization."""
        from .ort_cache import CACHE_DIR, write_entry

        lines = []
        cache = options.cache_dir or bundle.root / CACHE_DIR
        for name, spec in bundle.manifest["components"].items():
            runner = cls(name, bundle.path(spec["file"]), spec, RunnerOptions(provider=options.provider,
                                                                              cache_dir=cache))
            if runner._cached_graph() is not None and not options.force:
                lines.append(f"{name}: reusing the optimized graph {runner.cache_key().digest}")
                continue
            report(f"optimizing {name} for {runner.providers[0]} on {runner.cache_key().cpu}")
            start = time.perf_counter()
            write_entry(cache, runner.cache_key(), name, runner._optimize_to)
            lines.append(f"{name}: optimized for {runner.providers[0]} in {time.perf_counter() - start:.1f} s "
                         f"({runner.cache_key().digest})")
        return lines

    def _optimize_to(self, target: Path, data_name: str) -> None:
        """Create a session whose graph optimization writes the optimized graph to ``target``."""
        options = self.session_options(optimize=True)
        options.optimized_model_filepath = str(target)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_name)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                         str(1 << 20))
        try:
            _ort().InferenceSession(str(self.model_path), options, providers=self.providers)
        except _load_errors() as e:
            raise BundleError(f"{self.name}: ONNX Runtime could not load {self.model_path.name}: "
                              f"{one_line(e, with_type=False)}") from e

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outputs))

    def _release(self) -> None:
        self._session = None
        if self.low_memory:
            trim_heap()
