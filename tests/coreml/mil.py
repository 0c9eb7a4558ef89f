"""One-op MIL programs for the op tests, and comparisons in fp16 ulps."""

from __future__ import annotations

import numpy as np

from ldm_runtime.runners.coreml_reference.evaluate import evaluate
from ldm_runtime.runners.coreml_reference.program import from_mil

ARG_NAMES = ("a", "b", "c", "d")
_BODIES = {
    1: lambda f: (lambda a: f(a)),
    2: lambda f: (lambda a, b: f(a, b)),
    3: lambda f: (lambda a, b, c: f(a, b, c)),
    4: lambda f: (lambda a, b, c, d: f(a, b, c, d)),
}


def _float_dtype(tensors) -> type:
    return np.float16 if any(t.dtype == np.float16 for t in tensors) else np.float32


def program(build, tensors: list[np.ndarray], opset=None, n_const: int = 0):
    """The MIL program ``build(mb, dt, *inputs)``: one placeholder per tensor (named a, b, c, d), except the last
    ``n_const``, which are constants (weights, biases: MIL wants them known at compile time); ``dt`` is the
    float type of the tensors (for the op's float constants)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    fed = tensors[:len(tensors) - n_const]
    specs = [mb.TensorSpec(shape=t.shape, dtype=types.numpy_type_to_builtin_type(t.dtype)) for t in fed]

    def body(*xs):
        out = build(mb, _float_dtype(tensors), *xs, *[mb.const(val=t) for t in tensors[len(fed):]])
        return list(out) if isinstance(out, (tuple, list)) else out

    return mb.program(input_specs=specs, opset_version=opset)(_BODIES[len(fed)](body))


def run(build, tensors: list[np.ndarray], opset=None, arithmetic: str = "program", n_const: int = 0):
    """The reference evaluator's outputs of the one-op program, in output order."""
    prog = from_mil(program(build, tensors, opset, n_const), "test")
    out = evaluate(prog, dict(zip(ARG_NAMES, tensors[:len(tensors) - n_const])), arithmetic=arithmetic)
    return [out[name] for name in prog.outputs]


def value_inference(build, tensors: list[np.ndarray], opset=None, dt=None) -> list[np.ndarray]:
    """coremltools' own value inference of the op on constant inputs (its numpy reference), as float64;
    ``dt`` makes the op's float constants (default: the tensors' float type)."""
    from coremltools.converters.mil import Builder as mb

    got = []

    def body(_):
        out = build(mb, dt or _float_dtype(tensors), *[mb.const(val=t) for t in tensors])
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        got.extend(np.asarray(o.val) for o in outs)
        return mb.identity(x=_)

    program_of = mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=opset)
    program_of(_BODIES[1](body))
    if any(v is None or v.dtype == object for v in got):
        raise AssertionError("coremltools has no value inference for this op")
    return [v.astype(np.float64) if v.dtype.kind == "f" else v for v in got]


def ulps(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference in units of the fp16 spacing at the expected value (0 where both are equal)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    spacing = np.spacing(np.abs(expected).astype(np.float16)).astype(np.float64)
    diff = np.abs(actual - expected)
    return float(np.max(np.where(diff == 0, 0.0, diff / np.maximum(spacing, 2.0**-24)))) if diff.size else 0.0


def is_fp16_valued(x: np.ndarray) -> bool:
    return bool(np.array_equal(x, np.asarray(x, np.float32).astype(np.float16).astype(np.float32), equal_nan=True))
