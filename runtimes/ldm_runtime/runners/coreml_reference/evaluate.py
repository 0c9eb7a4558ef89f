"""Evaluate a :class:`~.program.Program` op by op in numpy.

Arithmetic (``arithmetic=``):

* ``"program"`` (default): each op's outputs are rounded to the dtype the program declares for them, so an
  fp16 program computes in fp16 from op to op, as Core ML's fp16 path does (GPU and Neural Engine run ML
  Programs in fp16; the CPU in fp16 too when the program is fp16).
* ``"fp32"``: every float is kept in float32 (the program's fp16 weights are exact in float32); this isolates
  what fp16 *storage* costs, against the same program.

Inside one op, floats are computed in float32 from the (exactly representable) fp16 inputs, and the result is
rounded once to fp16. For add, sub, mul, div and sqrt this is exactly IEEE fp16 arithmetic (float32 has more
than twice fp16's 11 significand bits, so the double rounding is innocuous). For matmul, conv and reductions
(mean, softmax's sum, layer norm's statistics) it means **float32 accumulation, then one rounding to fp16**:
Apple does not document its accumulators, but an fp16 accumulator would lose about log2(n)/2 more bits on an
n-term sum (a 3x3 conv over 320 channels sums 2880 products) and depend on a summation order no backend
documents, while fp32 accumulation of fp16 products is what GPU matrix units do. Transcendental functions
(exp, erf, sin ...) are float32 then rounded, within one fp16 ulp of the exact result; a device's own
approximations may differ by more. Where a device fuses ops (conv + bias + activation), it skips roundings
this evaluator makes, so the evaluator bounds the device's error; it does not reproduce its bits.
"""

from __future__ import annotations

import numpy as np

from ...errors import BundleError, UserError
from .ops import OPS
from .program import Op, Program

ARITHMETIC = ("program", "fp32")


def _value(env: dict, ref):
    if isinstance(ref, tuple):
        return [_value(env, r) for r in ref]
    value = env[ref]
    if isinstance(value, np.ndarray) and value.dtype == np.float16:
        return value.astype(np.float32)
    if isinstance(value, np.float16):
        return np.float32(value)
    return value


def _declared(value, dtype: np.dtype, arithmetic: str):
    """``value`` as the op's declared output dtype (float16 stays float32 under fp32 arithmetic)."""
    if dtype == np.dtype(object):
        return value
    if arithmetic == "fp32" and dtype == np.float16:
        dtype = np.dtype(np.float32)
    return np.asarray(value).astype(dtype, copy=False)


def _run_op(op: Op, env: dict, component: str):
    kernel = OPS.get(op.type)
    if kernel is None:
        raise BundleError(f"{component}: the Core ML reference evaluator has no kernel for MIL op '{op.type}' "
                          f"(op '{op.name}'); expected one of its {len(OPS)} ops; evaluate this component with "
                          f"another backend or add the op to coreml_reference/ops")
    result = kernel(**{k: _value(env, ref) for k, ref in op.inputs.items()})
    return result if isinstance(result, tuple) else (result,)


def evaluate(program: Program, feeds: dict[str, np.ndarray], *, arithmetic: str = "program") -> dict[str, np.ndarray]:
    """The program's outputs (float32, by output name) for ``feeds`` (by function input name)."""
    if arithmetic not in ARITHMETIC:
        raise UserError(f"arithmetic '{arithmetic}'; expected one of {', '.join(ARITHMETIC)}")
    missing = sorted(set(program.inputs) - set(feeds))
    if missing:
        raise UserError(f"{program.component}: inputs {missing} missing; the program takes {sorted(program.inputs)}")
    env: dict = dict(program.constants)
    for name, dtype in program.inputs.items():
        env[name] = _declared(feeds[name], dtype, arithmetic)
    keep = set(program.outputs)
    for i, op in enumerate(program.ops):
        cached = [program.decompressed.get((arithmetic, name)) for name in op.outputs]
        if op.type.startswith("constexpr_") and all(c is not None for c in cached):
            env.update(zip(op.outputs, cached))
            continue
        results = _run_op(op, env, program.component)
        for name, dtype, value in zip(op.outputs, op.dtypes, results):
            env[name] = _declared(value, dtype, arithmetic)
            if op.type.startswith("constexpr_"):  # a weight: decompress it once per program
                program.decompressed[arithmetic, name] = env[name]
        for ref in op.inputs.values():  # free what no later op reads
            for name in (ref,) if isinstance(ref, str) else ref:
                if program.last_use.get(name) == i and name not in keep and name not in program.constants:
                    env.pop(name, None)
    return {name: np.asarray(env[name], dtype=np.float32) for name in program.outputs}
