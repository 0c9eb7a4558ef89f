"""Activation MIL ops (iOS15 ``activation``), in the formulas of the MIL op definitions."""

from __future__ import annotations

import numpy as np

from .elementwise import erf


def sigmoid(x):
    # 1 / (1 + e^-x), written so that neither branch overflows
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu(x):
    return np.asarray(x) * sigmoid(x)


def gelu(x, mode="EXACT"):
    x = np.asarray(x)
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * sigmoid(1.702 * x)
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def softmax(x, axis=-1):
    # exp(x - max) / sum(exp(x - max)) along ``axis``
    x = np.asarray(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def softplus(x):
    x = np.asarray(x)
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def relu(x):
    return np.maximum(x, 0)


def relu6(x):
    return np.minimum(np.maximum(x, 0), 6)


def leaky_relu(x, alpha=0.01):
    x = np.asarray(x)
    return np.where(x >= 0, x, alpha * x)


def elu(x, alpha=1.0):
    x = np.asarray(x)
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def clamped_relu(x, alpha, beta):
    x = np.asarray(x)
    return np.minimum(np.where(x >= 0, x, alpha * x), beta)


def prelu(x, alpha):
    # alpha per channel (axis 1)
    x = np.asarray(x)
    a = np.asarray(alpha).reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x > 0, x, a * x)


def sigmoid_hard(x, alpha=0.2, beta=0.5):
    return np.minimum(np.maximum(alpha * np.asarray(x) + beta, 0), 1)


def linear_activation(x, alpha, beta=0.0):
    return alpha * np.asarray(x) + beta


def scaled_tanh(x, alpha=1.0, beta=1.0):
    return alpha * np.tanh(beta * np.asarray(x))


def softsign(x):
    x = np.asarray(x)
    return x / (1 + np.abs(x))


def thresholded_relu(x, alpha=1.0):
    x = np.asarray(x)
    return np.where(x >= alpha, x, 0)


OPS = {
    "sigmoid": sigmoid, "silu": silu, "gelu": gelu, "softmax": softmax, "softplus": softplus, "relu": relu,
    "relu6": relu6, "leaky_relu": leaky_relu, "elu": elu, "clamped_relu": clamped_relu, "prelu": prelu,
    "sigmoid_hard": sigmoid_hard, "linear_activation": linear_activation, "scaled_tanh": scaled_tanh,
    "softsign": softsign, "thresholded_relu": thresholded_relu,
}
