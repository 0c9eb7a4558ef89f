"""Normalization MIL ops (iOS15 ``normalization``): statistics in float32, biased variance."""

from __future__ import annotations

import numpy as np


def _per_channel(v, rank: int):
    return np.asarray(v).reshape((1, -1) + (1,) * (rank - 2))


def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    # out = gamma * (x - E[x]) / sqrt(Var[x] + eps) + beta, over ``axes``; gamma/beta have x.shape[axes]
    x = np.asarray(x)
    axes = tuple(range(x.ndim)) if axes is None else tuple(int(a) % x.ndim for a in np.atleast_1d(axes))
    centred = x - np.mean(x, axis=axes, keepdims=True)
    out = centred / np.sqrt(np.mean(centred * centred, axis=axes, keepdims=True) + epsilon)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    if gamma is not None:
        out = out * np.reshape(gamma, shape)
    if beta is not None:
        out = out + np.reshape(beta, shape)
    return out


def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    # per channel (axis 1): gamma * (x - mean) / sqrt(variance + eps) + beta, with given statistics
    x = np.asarray(x)
    out = (x - _per_channel(mean, x.ndim)) / np.sqrt(_per_channel(variance, x.ndim) + epsilon)
    if gamma is not None:
        out = out * _per_channel(gamma, x.ndim)
    if beta is not None:
        out = out + _per_channel(beta, x.ndim)
    return out


def instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    # per sample and channel, over the spatial dimensions
    x = np.asarray(x)
    axes = tuple(range(2, x.ndim))
    centred = x - np.mean(x, axis=axes, keepdims=True)
    out = centred / np.sqrt(np.mean(centred * centred, axis=axes, keepdims=True) + epsilon)
    if gamma is not None:
        out = out * _per_channel(gamma, x.ndim)
    if beta is not None:
        out = out + _per_channel(beta, x.ndim)
    return out


def l2_norm(x, epsilon=1e-6):
    # x / sqrt(sum(x^2) + eps) over the last three dimensions (all of them for rank 3)
    x = np.asarray(x)
    flat = x.reshape(int(np.prod(x.shape[:-3])) if x.ndim > 3 else 1, -1)
    return (flat / np.sqrt(np.sum(flat * flat, axis=1, keepdims=True) + epsilon)).reshape(x.shape)


OPS = {"layer_norm": layer_norm, "batch_norm": batch_norm, "instance_norm": instance_norm, "l2_norm": l2_norm}
