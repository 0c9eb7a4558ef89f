"""A Core ML ML Program as plain data: constants, and ops over named values, in execution order.

coremltools is used only to read the file: its ``.mlpackage`` reader and MIL protobuf loader give a MIL
``Program`` with its weights (compressed weights stay compressed: ``constexpr_*`` ops). The program is then
copied into :class:`Program`, which holds numpy arrays, strings and names only, and coremltools' objects are
dropped; the evaluator never touches coremltools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import BundleError
from .._coremltools import import_coremltools

WHAT = "the Core ML reference evaluator"


@dataclass(frozen=True)
class Op:
    type: str
    name: str
    inputs: dict[str, str | tuple[str, ...]]   # MIL parameter -> the name of its value (a tuple for lists)
    outputs: tuple[str, ...]
    dtypes: tuple[np.dtype, ...]                # each output's declared dtype


@dataclass
class Program:
    component: str
    inputs: dict[str, np.dtype]                 # function inputs and their declared dtypes
    outputs: list[str]
    ops: list[Op]
    constants: dict[str, object] = field(default_factory=dict)  # value name -> numpy value or str
    last_use: dict[str, int] = field(default_factory=dict)       # value name -> index of its last reader
    # decompressed weights (constexpr_* outputs depend on constants only), per arithmetic; a copy made with
    # dataclasses.replace starts empty
    decompressed: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, init=False, repr=False)

    @property
    def precision(self) -> str:
        """"fp16" when any op computes in float16, else "fp32"."""
        return "fp16" if any(np.float16 in op.dtypes for op in self.ops) else "fp32"

    def op_types(self) -> set[str]:
        return {op.type for op in self.ops}


def _dtype(var) -> np.dtype:
    from coremltools.converters.mil.mil import types

    return np.dtype(types.nptype_from_builtin(var.dtype)) if hasattr(var, "dtype") else np.dtype(object)


def _names(value) -> str | tuple[str, ...]:
    return tuple(v.name for v in value) if isinstance(value, (list, tuple)) else value.name


def from_mil(mil_program, component: str) -> Program:
    """Copy the ``main`` function of a coremltools MIL ``Program`` into a :class:`Program`."""
    if list(mil_program.functions) != ["main"]:
        raise BundleError(f"{component}: the Core ML program has functions {sorted(mil_program.functions)}; "
                          f"expected one, 'main'; rebuild the bundle with ldm-export")
    func = mil_program.functions["main"]
    program = Program(component, {k: _dtype(v) for k, v in func.inputs.items()}, [v.name for v in func.outputs], [])
    for mil_op in func.operations:
        if mil_op.op_type == "const":
            program.constants[mil_op.outputs[0].name] = mil_op.outputs[0].val
            continue
        program.ops.append(Op(mil_op.op_type, mil_op.name, {k: _names(v) for k, v in mil_op.inputs.items()},
                              tuple(v.name for v in mil_op.outputs), tuple(_dtype(v) for v in mil_op.outputs)))
    for i, op in enumerate(program.ops):
        for ref in op.inputs.values():
            for name in (ref,) if isinstance(ref, str) else ref:
                program.last_use[name] = i
    return program


def load_program(path: Path, component: str) -> Program:
    """Read the ``.mlpackage`` folder at ``path``."""
    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise BundleError(f"{component}: {path} is not a Core ML package (no Manifest.json); "
                          f"expected an .mlpackage folder; rebuild the bundle with --target coreml")
    ct = import_coremltools(WHAT)
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from google.protobuf.message import DecodeError

    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
    except DecodeError as e:
        raise BundleError(f"{component}: {path.name} does not parse as a Core ML model ({e}); "
                          f"the file is damaged; rebuild the bundle") from e
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise BundleError(f"{component}: {path.name} is a Core ML '{spec.WhichOneof('Type')}' model; "
                          f"expected an ML Program; convert with convert_to='mlprogram'")
    mil = milproto.load(spec, spec.specificationVersion, model.weights_dir)
    return from_mil(mil, component)
