"""The ``coreml`` backend (macOS): the bundle's ML Programs run by Core ML through ``coremltools.MLModel``.

Each component (each chunk of a split UNet) is compiled and loaded once, on the compute units asked for;
chunks run in order, each reading what the earlier ones produced. Core ML prediction exists on macOS only:
elsewhere ``load`` says so in one line and points at ``coreml-reference``.
"""

from __future__ import annotations

import platform

import numpy as np

from ..errors import BackendUnavailable, UserError
from ._coremltools import import_coremltools
from .base import Runner, RunnerOptions

COMPUTE_UNITS = {"all": "ALL", "cpu-and-ne": "CPU_AND_NE", "cpu-and-gpu": "CPU_AND_GPU", "cpu": "CPU_ONLY"}
ADAPTERS_AT_BUILD = ("Core ML bundles take LoRA adapters at build, not on the device: rebuild with "
                     "ldm-export build MODEL --target coreml --lora FILE[:SCALE]")
NOT_MACOS = "Core ML prediction needs macOS; --backend coreml-reference checks the programs here"


class NeedsMacOS(BackendUnavailable):
    """The device is absent: Core ML runs on Apple platforms only (no package install fixes that)."""

    def __init__(self):
        UserError.__init__(self, NOT_MACOS)
        self.pip_hint = None


class CoreMLRunner(Runner):
    backend = "coreml"
    ADAPTER_REFUSAL = ADAPTERS_AT_BUILD
    OPTIONS = ("compute_units",)
    FORMAT = "mlprogram"

    def __init__(self, name, model_path, spec, options: RunnerOptions = RunnerOptions()):
        super().__init__(name, model_path, spec, options)
        if options.compute_units not in COMPUTE_UNITS:
            raise UserError(f"Core ML compute units '{options.compute_units}'; expected one of "
                            f"{', '.join(COMPUTE_UNITS)}")
        self.compute_units = options.compute_units
        self._models: list = []

    def _files(self):
        chunks = self.spec.get("chunks")
        return [self.model_path.parent / c["file"] for c in chunks] if chunks else [self.model_path]

    def _load(self) -> None:
        if platform.system() != "Darwin":
            raise NeedsMacOS()
        ct = import_coremltools("the Core ML backend")
        units = getattr(ct.ComputeUnit, COMPUTE_UNITS[self.compute_units])
        self._models = []
        for path in self._files():
            model = ct.models.MLModel(str(path), compute_units=units)
            names = [f.name for f in model.get_spec().description.input]
            self._models.append((model, names))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = {k: (v.astype(np.int32) if v.dtype == np.int64 else v) for k, v in feeds.items()}
        for model, names in self._models:
            out = model.predict({k: values[k] for k in names})
            values.update({k: np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
                           for k, v in out.items()})
        return {k: values[k] for k in self.spec["outputs"]}

    def _release(self) -> None:
        self._models = []
