"""ONNX files: load and save with external data, and the 2 GB protobuf limit (numpy and onnx only, no torch).

A graph whose serialized proto would reach 2 GB (protobuf's limit) is saved with its tensors in one
``<name>.onnx.data`` file beside it, the layout the exporter and every recipe use.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Iterable

TWO_GB = 2**31


def load(path: str | Path):
    """The model at ``path`` with its external data loaded."""
    import onnx

    return onnx.load(str(path), load_external_data=True)


def external_data_files(path: str | Path) -> list[Path]:
    """The external-data files ``path`` refers to (distinct, existing or not), in first-use order."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    files: list[Path] = []
    for t in _all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc is not None and (Path(path).parent / loc) not in files:
                files.append(Path(path).parent / loc)
    return files


def _all_tensors(proto) -> Iterable:
    yield from proto.graph.initializer
    for node in proto.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t


def serialized_size(proto) -> int:
    """The proto's size in bytes; protobuf's upb backend raises instead of returning a size over 2 GB."""
    from google.protobuf.message import EncodeError

    try:
        return proto.ByteSize()
    except EncodeError:
        return TWO_GB + sum(len(t.raw_data) for t in proto.graph.initializer)


def save(proto, path: str | Path, external: bool = False) -> list[str]:
    """Save ``proto`` to ``path``; with ``external`` or above 2 GB its tensors go to one ``<name>.data`` file
    beside it (the exporter's layout). Returns the file names written."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()  # onnx appends to an existing data file
    if external or serialized_size(proto) >= TWO_GB:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path.name, data.name]
    onnx.save_model(proto, str(path))
    return [path.name]


def model_size_bytes(path: str | Path) -> int:
    """Size on disk of the model file plus every external-data file it refers to."""
    path = Path(path)
    return path.stat().st_size + sum(f.stat().st_size for f in external_data_files(path) if f.exists())
