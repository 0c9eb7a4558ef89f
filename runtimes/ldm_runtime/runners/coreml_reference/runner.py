"""The ``coreml-reference`` backend: a bundle's Core ML programs evaluated in numpy, on any machine.

It proves, without a Mac, that the programs a device will compile compute the model (the graph, the
enumerated shapes, the weights after compression, fp16 rounding at op boundaries); ``ldm-run verify`` on the
device then proves the device's kernels. A UNet split into chunks (``spec["chunks"]``: their files, relative to
the folder of ``model_path``, in order) runs chunk after chunk, each reading what the earlier ones produced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BundleError, UserError
from ..base import Runner, RunnerOptions
from ..coreml import ADAPTERS_AT_BUILD
from .evaluate import ARITHMETIC, evaluate
from .program import Program, load_program

INT32 = np.iinfo(np.int32)


def _as_program_dtype(name: str, key: str, value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Core ML programs take int32 where torch took int64 (token ids, class labels): cast, refusing overflow."""
    if value.dtype == dtype or dtype.kind != "i" or value.dtype.kind != "i":
        return value
    if value.size and (value.min() < INT32.min or value.max() > INT32.max):
        raise UserError(f"{name}.{key}: values {value.min()}..{value.max()} do not fit the program's int32 input; "
                        f"expected ids within {INT32.min}..{INT32.max}")
    return value.astype(dtype)


class CoreMLReferenceRunner(Runner):
    backend = "coreml-reference"
    ADAPTER_REFUSAL = ADAPTERS_AT_BUILD
    OPTIONS = ("arithmetic",)
    FORMAT = "mlprogram"

    def __init__(self, name, model_path, spec, options: RunnerOptions = RunnerOptions()):
        super().__init__(name, model_path, spec, options)
        if options.arithmetic not in ARITHMETIC:
            raise UserError(f"arithmetic '{options.arithmetic}'; expected one of {', '.join(ARITHMETIC)}")
        self.arithmetic = options.arithmetic
        self._programs: list[Program] = []

    def _files(self) -> list[Path]:
        chunks = self.spec.get("chunks")
        if not chunks:
            return [self.model_path]
        return [self.model_path.parent / c["file"] for c in chunks]

    def _load(self) -> None:
        self._programs = [load_program(path, self.name) for path in self._files()]
        produced = set(self.spec["inputs"])
        for program in self._programs:
            missing = sorted(set(program.inputs) - produced)
            if missing:
                raise BundleError(f"{self.name}: the program needs {missing}, which neither the component's "
                                  f"inputs nor an earlier chunk provide; rebuild the bundle")
            produced |= set(program.outputs)
        absent = sorted(set(self.spec["outputs"]) - produced)
        if absent:
            raise BundleError(f"{self.name}: the bundle declares outputs {absent} that its programs do not produce "
                              f"(they produce {sorted(produced)}); rebuild the bundle")

    def _check_enumerated(self, feeds: dict[str, np.ndarray]) -> None:
        """Only the shapes the bundle was built to serve (the input's ``enumerated`` list, when it has one): the
        device refuses shapes outside an enumeration, so the reference does too."""
        for key, spec in self.spec["inputs"].items():
            served = [tuple(s) for s in spec.get("enumerated", [])]
            if served and tuple(feeds[key].shape) not in served:
                raise UserError(f"{self.name}.{key}: shape {tuple(feeds[key].shape)} is not one the Core ML "
                                f"program serves; expected one of {sorted(set(served))}; try a size and batch "
                                f"the bundle was built for")

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_enumerated(feeds)
        values = dict(feeds)
        for program in self._programs:
            args = {k: _as_program_dtype(self.name, k, values[k], program.inputs[k]) for k in program.inputs}
            values.update(evaluate(program, args, arithmetic=self.arithmetic))
        return {k: values[k] for k in self.spec["outputs"]}

    def _release(self) -> None:
        self._programs = []
