"""Shape and tensor-manipulation MIL ops: values are moved, never computed (exact in any dtype)."""

from __future__ import annotations

import numpy as np


def _ints(v) -> list[int]:
    return [int(i) for i in np.atleast_1d(v)]


def shape(x):
    return np.array(np.shape(x), dtype=np.int32)


def reshape(x, shape):
    # 0 copies the input's dimension (when len(shape) == rank); one -1 takes what is left
    x, target = np.asarray(x), _ints(shape)
    if 0 in target and len(target) == x.ndim:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def transpose(x, perm):
    return np.transpose(x, _ints(perm))


def expand_dims(x, axes):
    return np.expand_dims(x, tuple(_ints(axes)))


def squeeze(x, axes=None):
    x = np.asarray(x)
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(_ints(axes)))


def concat(values, axis, interleave=False):
    # interleave: out[..., i * N + j, ...] = values[j][..., i, ...]
    axis = int(axis)
    if not interleave:
        return np.concatenate([np.atleast_1d(v) for v in values], axis=axis)
    stacked = np.stack(values, axis=(axis % np.ndim(values[0])) + 1)
    shape = list(np.shape(values[0]))
    shape[axis] *= len(values)
    return stacked.reshape(shape)


def stack(values, axis):
    return np.stack(values, axis=int(axis))


def split(x, axis, num_splits=None, split_sizes=None):
    x, axis = np.asarray(x), int(axis)
    if split_sizes is None:
        return tuple(np.split(x, int(num_splits), axis=axis))
    return tuple(np.split(x, np.cumsum(_ints(split_sizes))[:-1], axis=axis))


def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    # x[begin:end:stride] per axis; a mask ignores begin (from the start) or end (to the end);
    # squeeze_mask takes the single element at begin and drops the axis
    x = np.asarray(x)
    n = x.ndim
    stride = _ints(stride) if stride is not None else [1] * n
    flags = [np.zeros(n, bool) if m is None else np.asarray(m, bool) for m in (begin_mask, end_mask, squeeze_mask)]
    index = []
    for i, (b, e) in enumerate(zip(_ints(begin), _ints(end))):
        if flags[2][i]:
            index.append(b)
        else:
            index.append(slice(None if flags[0][i] else b, None if flags[1][i] else e, stride[i]))
    return x[tuple(index)]


def slice_by_size(x, begin, size):
    # size -1: to the end of the axis
    x = np.asarray(x)
    index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(_ints(begin), _ints(size)))
    return x[index]


def gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    # out = take(x, indices, axis) for each of the leading ``batch_dims`` (shared by x and indices)
    x, indices, axis, batch_dims = np.asarray(x), np.asarray(indices), int(axis) % np.ndim(x), int(batch_dims)
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    lead = x.shape[:batch_dims]
    xs = x.reshape((-1,) + x.shape[batch_dims:])
    ids = indices.reshape((-1,) + indices.shape[batch_dims:])
    parts = [np.take(xs[i], ids[i], axis=axis - batch_dims) for i in range(xs.shape[0])]
    return np.stack(parts).reshape(lead + parts[0].shape)


def gather_along_axis(x, indices, axis=0, validate_indices=False):
    return np.take_along_axis(np.asarray(x), np.asarray(indices), axis=int(axis))


def tile(x, reps):
    return np.tile(x, _ints(reps))


def pad(x, pad, mode="constant", constant_val=0.0):
    # pad = [before_0, after_0, before_1, after_1, ...] for the last len(pad) / 2 dimensions
    x, p = np.asarray(x), _ints(pad)
    widths = [(0, 0)] * (x.ndim - len(p) // 2) + [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=constant_val)
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


def fill(shape, value=0.0):
    return np.full(_ints(shape), value)


def range_1d(end, start, step):
    return np.arange(start, end, step)


def identity(x):
    return x


def flatten2d(x, axis=1):
    x = np.asarray(x)
    return x.reshape(int(np.prod(x.shape[:int(axis)])), -1)


def reverse(x, axes=None):
    return np.flip(x, axis=None if axes is None else tuple(_ints(axes)))


OPS = {
    "shape": shape, "reshape": reshape, "transpose": transpose, "expand_dims": expand_dims, "squeeze": squeeze,
    "concat": concat, "stack": stack, "split": split, "slice_by_index": slice_by_index,
    "slice_by_size": slice_by_size, "gather": gather, "gather_along_axis": gather_along_axis, "tile": tile,
    "pad": pad, "fill": fill, "range_1d": range_1d, "identity": identity, "flatten2d": flatten2d,
    "reverse": reverse,
}
