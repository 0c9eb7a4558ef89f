"""The reference evaluator's op table: MIL op type -> numpy kernel, one module per op family.

A kernel takes the op's MIL parameters as keyword arguments (tensors as numpy arrays, floats as float32,
constants as numpy values or strings) and returns an array, or a tuple for ops with several outputs. The
evaluator casts each result to the dtype the program declares.
"""

from __future__ import annotations

from . import activations, attention, constexpr, elementwise, linear, normalization, pooling, reductions, resize, tensor

FAMILIES = {
    "elementwise": elementwise.OPS, "activations": activations.OPS, "attention": attention.OPS, "linear": linear.OPS,
    "normalization": normalization.OPS, "pooling": pooling.OPS, "reductions": reductions.OPS, "tensor": tensor.OPS,
    "resize": resize.OPS, "constexpr": constexpr.OPS,
}


def _table() -> dict:
    table: dict = {}
    for family, ops in FAMILIES.items():
        clash = set(table) & set(ops)
        if clash:
            raise RuntimeError(f"ops {sorted(clash)} are defined twice (again in {family})")
        table.update(ops)
    return table


OPS = _table()
