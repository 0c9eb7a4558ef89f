"""Reduction MIL ops (iOS15 ``reduction``): ``axes`` (all when absent), ``keep_dims``; sums in float32."""

from __future__ import annotations

import numpy as np


def _axes(x, axes):
    return None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))


def _reduce(fn):
    def kernel(x, axes=None, keep_dims=False):
        return fn(np.asarray(x), axis=_axes(x, axes), keepdims=bool(keep_dims))

    return kernel


def _log_sum_exp(x, axis=None, keepdims=False):
    # log(sum(exp(x))) = m + log(sum(exp(x - m))), m = max(x)
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def _arg(fn):
    def kernel(x, axis=-1, keep_dims=False, output_dtype="int32"):  # the evaluator applies output_dtype
        out = fn(np.asarray(x), axis=int(axis))
        return np.expand_dims(out, int(axis)) if keep_dims else out

    return kernel


OPS = {
    "reduce_mean": _reduce(np.mean), "reduce_sum": _reduce(np.sum), "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min), "reduce_prod": _reduce(np.prod),
    "reduce_sum_square": _reduce(lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims)),
    "reduce_l1_norm": _reduce(lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims)),
    "reduce_l2_norm": _reduce(lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims))),
    "reduce_log_sum": _reduce(lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims))),
    "reduce_log_sum_exp": _reduce(_log_sum_exp),
    "reduce_argmax": _arg(np.argmax), "reduce_argmin": _arg(np.argmin),
}
