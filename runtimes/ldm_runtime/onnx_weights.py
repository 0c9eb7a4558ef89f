"""A graph's initializers read straight from the ONNX file, without the ``onnx`` package.

The runtime needs a component's weights by name for adapters (base + Σ scale·B·A, then handed to ONNX
Runtime at session creation or refitted into a TensorRT engine) and must stay without ``onnx``. An ONNX
file is a protobuf ``ModelProto``; this reads its wire format just far enough:

    ModelProto.graph (7) → GraphProto.initializer (5, repeated TensorProto)
    TensorProto: dims (1), data_type (2), float_data (4), int32_data (5), int64_data (7), name (8),
                 raw_data (9), external_data (13: key 1 / value 2), data_location (14)

:func:`initializers` indexes every top-level initializer (name, shape, dtype, where its bytes are) without
copying any weight; :meth:`Initializer.read` reads one, inline or from its external-data file.
"""

from __future__ import annotations

import functools
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError

# TensorProto.DataType → numpy
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}


@dataclass(frozen=True)
class Initializer:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    file: Path            # the file holding the bytes (the graph, or its external data)
    offset: int
    length: int
    packed: str = "raw"   # raw: little-endian bytes; float32 / int32 / int64: a packed repeated field

    def read(self) -> np.ndarray:
        with open(self.file, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.length)
        if len(data) != self.length:
            raise BundleError(f"initializer {self.name}: {self.file.name} ends before its {self.length} bytes")
        if self.packed == "raw":
            arr = np.frombuffer(data, dtype=np.dtype(self.dtype).newbyteorder("<"))
        elif self.packed == "float32":
            arr = np.frombuffer(data, dtype="<f4")
        else:  # int32_data / int64_data hold varints (float16 and int8 are stored as int32_data)
            arr = np.array(_varints(data), dtype=np.int64)
            if np.dtype(self.dtype) == np.float16:
                return arr.astype(np.uint16).view(np.float16).reshape(self.shape)
        return arr.astype(self.dtype, copy=False).reshape(self.shape)


def _varint(buf, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _varints(data: bytes) -> list[int]:
    out, i = [], 0
    while i < len(data):
        v, i = _varint(data, i)
        out.append(v - (1 << 64) if v >= 1 << 63 else v)
    return out


def _fields(buf, start: int, end: int):
    """(field number, wire type, value or (offset, length)) of each field of the message in buf[start:end]."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            yield field, wire, v
        elif wire == 2:
            n, i = _varint(buf, i)
            yield field, wire, (i, n)
            i += n
        elif wire == 5:
            yield field, wire, None
            i += 4
        elif wire == 1:
            yield field, wire, None
            i += 8
        else:
            raise BundleError(f"not an ONNX file: protobuf wire type {wire} at byte {i}")


def _tensor(buf, start: int, end: int, path: Path) -> Initializer:
    dims: list[int] = []
    dtype, name, where, packed, external, location = 0, "", None, "raw", {}, 0
    for field, wire, v in _fields(buf, start, end):
        if field == 1:
            dims += [v] if wire == 0 else _varints(bytes(buf[v[0]:v[0] + v[1]]))
        elif field == 2:
            dtype = v
        elif field == 8:
            name = bytes(buf[v[0]:v[0] + v[1]]).decode("utf-8")
        elif field in (9, 4, 5, 7) and wire == 2:
            where, packed = v, {9: "raw", 4: "float32", 5: "int32", 7: "int64"}[field]
        elif field == 13:
            kv = {f: bytes(buf[o:o + n]).decode("utf-8") for f, _, (o, n) in _fields(buf, v[0], v[0] + v[1])}
            external[kv.get(1, "")] = kv.get(2, "")
        elif field == 14:
            location = v
    if dtype not in DTYPES:
        raise BundleError(f"initializer {name} of {path.name}: ONNX data type {dtype} is not one the runtime reads")
    dt = np.dtype(DTYPES[dtype])
    if location == 1:
        size = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
        return Initializer(name, tuple(dims), dt, path.parent / external["location"],
                           int(external.get("offset", 0)), int(external.get("length", size)))
    offset, length = where if where is not None else (0, 0)
    return Initializer(name, tuple(dims), dt, path, offset, length, packed)


def initializers(path: str | Path) -> dict[str, Initializer]:
    """Every top-level initializer of the ONNX graph at ``path``, by name (no weight is read). The index is
    kept per file (and its size and modification time): a swap of adapters, the session it re-creates and
    each low-memory reload read it once, not once each. Callers must not modify the returned dict."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise BundleError(f"cannot read the initializers of {path.name}: {e}") from e
    return _index(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _index(path: Path, size: int, mtime_ns: int) -> dict[str, Initializer]:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            graph = next((v for fld, wire, v in _fields(buf, 0, len(buf)) if fld == 7 and wire == 2), None)
            if graph is None:
                raise BundleError(f"{path.name} holds no ONNX graph")
            out = {}
            for fld, wire, v in _fields(buf, graph[0], graph[0] + graph[1]):
                if fld == 5 and wire == 2:
                    t = _tensor(buf, v[0], v[0] + v[1], path)
                    out[t.name] = t
            return out
    except (OSError, ValueError, IndexError) as e:
        raise BundleError(f"cannot read the initializers of {path.name}: {e}") from e
