"""Conversion workarounds for coremltools 9.0 with torch 2.13, in one place.

Each workaround names the versions it was needed for and is applied only inside :func:`applied`, which
puts coremltools' torch-op registry back as it found it. ``tests/coreml/test_workarounds.py`` converts the
minimal failing case of each one *without* it and expects the known error, so the test fails (and the
workaround can go) once upstream no longer needs it.

1. ``alias`` (coremltools 9.0, torch >= 2.10): ``torch.export`` emits ``aten.alias`` for a full-range
   slice of a buffer (CLIP's ``position_ids[:, :seq_length]``); coremltools has no translation for it
   ("Unsupported fx node alias"). It is a view without a copy: the existing no-op translation is right.
2. ``group_norm`` with a symbolic batch (coremltools 9.0): the translation builds the grouped shape
   ``[batch, groups, channels / groups, ...]`` as a constant, which cannot hold a symbol ("Cannot add
   const [is1, ...]"). Reshaping with ``-1`` for the batch and the input's runtime shape for the rest
   computes the same thing with any dynamic dimension.
3. ``cdist`` (coremltools 9.0): no translation for ``aten.cdist`` ("Unsupported fx node cdist"), which
   diffusers' ``VectorQuantizer`` uses for the nearest-codebook search of VQ decoders. The Euclidean distance
   is translated as torch computes it for more than 25 rows: ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-30))``.
"""

from __future__ import annotations

import builtins
import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np


@dataclass(frozen=True)
class Workaround:
    name: str
    versions: str                          # where it was measured to be needed
    symptom: str                           # the start of the error coremltools raises without it
    translations: dict[str, Callable]      # torch op -> coremltools translation (context, node) -> None


def _ops():
    from coremltools.converters.mil.frontend.torch import ops

    return ops


def _alias(context, node):
    return _ops().noop(context, node)


def _group_norm_dynamic(x, num_groups: int, weight, bias, eps: float):
    """Group norm (Wu & He 2018) in MIL for an input whose batch (or any dimension) is symbolic."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.types.symbolic import any_symbolic

    if not any_symbolic(x.shape):
        return _ops()._group_norm_impl(x, num_groups, weight, bias, eps)
    c, rank = x.shape[1], x.rank
    groups = builtins.min(num_groups, c)
    # 1. x -> [N, G, C/G, *spatial]: -1 takes the batch, the runtime shape the spatial dims
    shape = mb.shape(x=x)
    spatial = mb.slice_by_index(x=shape, begin=[2], end=[rank])
    grouped = mb.concat(values=[np.array([-1, groups, c // groups], dtype=np.int32), spatial], axis=0)
    xg = mb.reshape(x=x, shape=grouped)
    # 2. normalise over each group: (x - mean) / sqrt(var + eps), biased variance
    axes = list(range(2, rank + 1))
    mean = mb.reduce_mean(x=xg, axes=axes, keep_dims=True)
    centred = mb.sub(x=xg, y=mean)
    var = mb.reduce_mean(x=mb.mul(x=centred, y=centred), axes=axes, keep_dims=True)
    xg = mb.real_div(x=centred, y=mb.sqrt(x=mb.add(x=var, y=eps)))
    # 3. back to [N, C, *spatial], then the per-channel affine transform
    out = mb.reshape(x=xg, shape=shape)
    per_channel = [1, c] + [1] * (rank - 2)
    if weight is not None:
        out = mb.mul(x=out, y=mb.reshape(x=weight, shape=per_channel))
    if bias is not None:
        out = mb.add(x=out, y=mb.reshape(x=bias, shape=per_channel))
    return out


def _group_norm(context, node):
    ops = _ops()
    frontend = ops.TorchFrontend
    inputs = ops._get_inputs(context, node, min_expected={frontend.TORCHEXPORT: 2, frontend.EXECUTORCH: 2})
    x, num_groups = inputs[0], inputs[1].val
    weight = inputs[2] if len(inputs) > 2 else None
    bias = inputs[3] if len(inputs) > 3 else None
    eps = inputs[4].val if len(inputs) > 4 else 1e-5
    weight = ops._get_kwinputs(context, node, "weight", default=[weight])[0]
    bias = ops._get_kwinputs(context, node, "bias", default=[bias])[0]
    context.add(_group_norm_dynamic(x, num_groups, weight, bias, eps), node.name)


def _native_group_norm(context, node):
    x, weight, bias, _n, _c, _hw, group, eps = _ops()._get_inputs(context, node, expected=8)
    context.add((_group_norm_dynamic(x, group.val, weight, bias, eps.val), None, None), node.name)


def _cdist(context, node):
    """``torch.cdist(x1, x2)`` for p = 2: x1 [..., P, M], x2 [..., R, M] -> [..., P, R]."""
    from coremltools.converters.mil import Builder as mb

    inputs = _ops()._get_inputs(context, node, min_expected=2)
    x1, x2 = inputs[0], inputs[1]
    p = inputs[2].val if len(inputs) > 2 and inputs[2] is not None else 2.0
    if p != 2.0:
        raise NotImplementedError(f"cdist with p={p}: only the Euclidean distance (p=2) is translated")
    # 1. squared norms |x1|^2 as a column [..., P, 1], |x2|^2 as a row [..., 1, R]
    x1_sq = mb.reduce_sum(x=mb.mul(x=x1, y=x1), axes=[-1], keep_dims=True)
    x2_sq = mb.expand_dims(x=mb.reduce_sum(x=mb.mul(x=x2, y=x2), axes=[-1], keep_dims=False), axes=[-2])
    # 2. |x1 - x2|^2 = |x1|^2 + |x2|^2 - 2 x1 . x2, clamped as torch clamps it, then the root
    dots = mb.matmul(x=x1, y=x2, transpose_y=True)
    d2 = mb.sub(x=mb.add(x=x1_sq, y=x2_sq), y=mb.mul(x=dots, y=2.0))
    context.add(mb.sqrt(x=mb.maximum(x=d2, y=1e-30), name=node.name), node.name)


WORKAROUNDS: tuple[Workaround, ...] = (
    Workaround("alias", "coremltools 9.0 with torch 2.13 (torch.export emits aten.alias)",
               "Unsupported fx node alias", {"alias": _alias}),
    Workaround("group_norm_symbolic_batch", "coremltools 9.0 with torch 2.13: group_norm, symbolic batch",
               "Cannot add const", {"group_norm": _group_norm, "native_group_norm": _native_group_norm}),
    Workaround("cdist", "coremltools 9.0 with torch 2.13: aten.cdist (VQ codebook search)",
               "Unsupported fx node cdist", {"cdist": _cdist}),
)


@contextlib.contextmanager
def applied(names: tuple[str, ...] | None = None) -> Iterator[None]:
    """Convert with the workarounds ``names`` (all by default) registered; restores the registry after."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    saved = dict(table)
    try:
        for w in WORKAROUNDS:
            if names is None or w.name in names:
                table.update(w.translations)
        yield
    finally:
        table.clear()
        table.update(saved)
