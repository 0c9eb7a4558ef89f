"""Elementwise MIL ops (iOS15 ``elementwise_binary`` / ``elementwise_unary``), with numpy broadcasting.

Floats arrive as float32 (see the evaluator's arithmetic note); the evaluator rounds the result to the
declared output dtype, so integer ops such as ``real_div`` on int32 shapes come out truncated to int32.
"""

from __future__ import annotations

import numpy as np


def _binary(fn):
    return lambda x, y: fn(np.asarray(x), np.asarray(y))


def _unary(fn):
    return lambda x: fn(np.asarray(x))


def floor_div(x, y):
    return np.floor_divide(x, y)


def mod(x, y):
    return np.mod(x, y)  # MIL: the result has the sign of y, as numpy's


def rsqrt(x, epsilon=1e-12):
    return 1.0 / np.sqrt(np.asarray(x) + epsilon)


def log(x, epsilon=1e-45):
    return np.log(np.asarray(x) + epsilon)


def inverse(x, epsilon=1e-4):
    return 1.0 / (np.asarray(x) + epsilon)


# erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), z >= 0: Chebyshev fit with relative error < 1.2e-7
# everywhere (Press et al., Numerical Recipes, 2nd ed., section 6.2, erfcc).
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
         -0.82215223, 0.17087277)


def erf(x):
    """The error function, evaluated in float64 (numpy has no erf; the runtime does not depend on scipy)."""
    x = np.asarray(x)
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(t)
    for c in reversed(_ERFC):
        poly = poly * t + c
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def clip(x, alpha, beta):
    return np.minimum(np.maximum(x, alpha), beta)


def threshold(x, alpha):
    return np.maximum(x, alpha)


def select(cond, a, b):
    return np.where(cond, a, b)


def cast(x, dtype):
    """MIL cast; float to int truncates toward zero (the evaluator applies the declared dtype)."""
    x = np.asarray(x)
    if dtype.startswith("int") and x.dtype.kind == "f":
        return np.trunc(x)
    return x


OPS = {
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "real_div": _binary(np.true_divide), "floor_div": floor_div, "mod": mod, "pow": _binary(np.power),
    "maximum": _binary(np.maximum), "minimum": _binary(np.minimum),
    "equal": _binary(np.equal), "not_equal": _binary(np.not_equal), "less": _binary(np.less),
    "less_equal": _binary(np.less_equal), "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal), "logical_and": _binary(np.logical_and),
    "logical_or": _binary(np.logical_or), "logical_xor": _binary(np.logical_xor),
    **{name: _unary(fn) for name, fn in (
        ("abs", np.abs), ("ceil", np.ceil), ("floor", np.floor), ("round", np.round), ("sign", np.sign),
        ("sqrt", np.sqrt), ("exp", np.exp), ("exp2", np.exp2), ("sin", np.sin), ("cos", np.cos),
        ("tan", np.tan), ("tanh", np.tanh), ("square", np.square), ("logical_not", np.logical_not))},
    "rsqrt": rsqrt, "log": log, "inverse": inverse, "erf": erf, "clip": clip, "threshold": threshold,
    "select": select, "cast": cast,
}
