"""Helpers shared by the recipes: load/save (external data), run a graph in ONNX Runtime, metrics,
quantizable nodes and their grouping into blocks.

Everything here works on ONNX files and numpy arrays only; torch is never imported.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from ldm_runtime.jsonio import json_number
from ldm_runtime.metrics import compare, tensor_psnr

from ..onnx_io import TWO_GB, load, save, serialized_size

Feeds = Sequence[Mapping[str, np.ndarray]]
Report = Callable[[str], None] | None

# Ops whose weight input is quantized (TensorRT's "weighted" layers). MatMul only with a 2-D initializer B
# (a Linear layer); MatMuls of two activations (attention scores, attention × values) are not quantized.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _say(report: Report, msg: str) -> None:
    if report is not None:
        report(msg)


def infer_types(proto):
    """``proto`` with onnx shape/type inference applied (through a file above 2 GB)."""
    import onnx

    if serialized_size(proto) < TWO_GB:
        return onnx.shape_inference.infer_shapes(proto)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        save(proto, src, external=True)
        onnx.shape_inference.infer_shapes_path(str(src), str(dst))
        return load(dst)


def float_tensor_types(proto) -> dict[str, int]:
    """Element type of every typed value (inputs, outputs, value_info) of an inferred model."""
    types = {}
    for vi in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


# ------------------------------------------------------------------------------------------- running

def session_options(threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


class Session:
    """An ORT CPU session over a file or an in-memory proto (through a temporary file above 2 GB)."""

    def __init__(self, model, threads: int | None = None):
        import onnxruntime as ort

        self._tmp = None
        so = session_options(threads)
        if isinstance(model, (str, Path)):
            src = str(model)
        elif serialized_size(model) < TWO_GB:
            src = model.SerializeToString()
        else:
            self._tmp = tempfile.TemporaryDirectory()
            src = str(Path(self._tmp.name) / "model.onnx")
            save(model, src, external=True)
        self.sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.sess.get_inputs()]
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def run(self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.output_names
        values = self.sess.run(names, {k: feed[k] for k in self.input_names})
        return dict(zip(names, values))

    def close(self):
        self.sess = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_onnx(model, feeds: Feeds, *, threads: int | None = None) -> list[dict[str, np.ndarray]]:
    """Run ``model`` (a path or a ModelProto) in ORT CPU on each feed; returns its outputs per feed, by name."""
    with Session(model, threads) as s:
        return [s.run(f) for f in feeds]


# ------------------------------------------------------------------------------------------- metrics

def _flat(x) -> np.ndarray:
    """One float64 vector from an array, a sequence of arrays, or a sequence of output dicts
    (dicts in sorted-name order, so two runs of the same graph line up)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64).ravel()
    if isinstance(x, Mapping):
        return np.concatenate([_flat(x[k]) for k in sorted(x)]) if x else np.zeros(0)
    parts = [_flat(v) for v in x]
    return np.concatenate(parts) if parts else np.zeros(0)


def output_psnr(ref, got) -> float:
    """Output PSNR in dB of ``got`` against the fp32 reference ``ref`` (:func:`ldm_runtime.metrics.tensor_psnr`:
    ``10 · log10(peak² / MSE)``, peak = max |ref|) over every element of every output of every feed (arrays,
    lists of arrays, or the lists of output dicts :func:`run_onnx` returns). ``inf`` when identical; ``-inf``
    when ``got`` has a NaN or Inf."""
    return tensor_psnr(_flat(got), _flat(ref))


def output_metrics(ref, got) -> dict:
    """PSNR (dB), cosine similarity, relative L2 and max |difference| of ``got`` against ``ref`` (all feeds),
    as JSON values; the last three are None when ``got`` is not finite."""
    a, b = _flat(got), _flat(ref)
    finite = bool(np.all(np.isfinite(a)))
    m = compare(a, b) if finite else {"cosine": None, "rel_l2": None, "max_abs": None}
    return {"psnr_db": json_number(tensor_psnr(a, b), 4), "cosine": m["cosine"],
            "rel_l2": json_number(m["rel_l2"]) if finite else None,
            "max_abs": m["max_abs"] if finite and a.size else None, "finite": finite}


# ---------------------------------------------------------------------------- quantizable nodes, blocks

@dataclass(frozen=True)
class WeightedNode:
    name: str
    op_type: str
    weight: str          # initializer name
    weight_params: int   # number of elements
    axis: int            # output-channel axis of the weight


def _initializers(proto) -> dict:
    return {t.name: t for t in proto.graph.initializer}


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def weighted_nodes(proto) -> list[WeightedNode]:
    """Conv/ConvTranspose/Gemm nodes with an initializer weight, and MatMul nodes whose B is a 2-D
    initializer (Linear layers), in graph order. Activation × activation MatMuls are not included."""
    inits = _initializers(proto)
    out = []
    for n in proto.graph.node:
        if n.op_type not in WEIGHTED_OPS or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = inits[n.input[1]]
        if w.data_type != 1:  # FLOAT
            continue
        dims = list(w.dims)
        if n.op_type == "MatMul":
            if len(dims) != 2:
                continue
            axis = 1
        elif n.op_type == "Gemm":
            axis = 0 if _attr(n, "transB", 0) else 1
        elif n.op_type == "ConvTranspose":
            if _attr(n, "group", 1) != 1:
                continue
            axis = 1
        else:
            axis = 0
        if not n.name:
            raise ValueError(f"a {n.op_type} node has no name; name every node before quantizing")
        out.append(WeightedNode(n.name, n.op_type, w.name, int(np.prod(dims)), axis))
    return out


_INDEXED = re.compile(r".+\.\d+$")


def _scope(node_name: str) -> list[str]:
    parts = [p for p in node_name.split("/") if p]
    return parts[:-1]  # the last part is the op ("Conv", "MatMul_1")


def block_names(node_names: Sequence[str]) -> dict[str, str]:
    """Group node names into blocks, from the module scopes torch writes into ONNX node names.

    ``/m/down_blocks.0/resnets.0/conv1/Conv`` → ``down_blocks.0/resnets.0``: the scope is cut after its second
    indexed component (``name.N``), or after its first when there is only one (``mid_block/attentions.0``,
    ``text_model/encoder/layers.3``); a scope without an index is a block of its own (``conv_in``,
    ``time_embedding/linear_1``); a block whose name continues another block's name joins that one
    (``mid_block/attentions.0/transformer_blocks.0`` → ``mid_block/attentions.0``). Leading components shared
    by every node (the export wrapper's ``m``) are dropped. A node without a scope (``Conv_12``) is its own
    block."""
    scopes = {n: _scope(n) for n in node_names}
    common = 0
    with_scope = [s for s in scopes.values() if s]
    if len(with_scope) > 1:
        first = with_scope[0]
        while (common < min(len(s) for s in with_scope) - 1
               and all(s[common] == first[common] for s in with_scope)):
            common += 1
    blocks = {}
    for name, scope in scopes.items():
        if not scope:
            blocks[name] = name
            continue
        scope = scope[common:] if len(scope) > common else scope
        idx = [i for i, p in enumerate(scope) if _INDEXED.match(p)]
        if not idx:
            blocks[name] = "/".join(scope)
        else:
            cut = idx[1] if len(idx) > 1 else idx[0]
            blocks[name] = "/".join(scope[:cut + 1])
    # a block inside another block joins it (mid_block/attentions.0/transformer_blocks.0 → mid_block/attentions.0,
    # whose proj_in/proj_out sit one level up)
    names = set(blocks.values())
    outer = {b: min((a for a in names if b.startswith(a + "/")), key=len, default=b) for b in names}
    return {n: outer[b] for n, b in blocks.items()}


def ensure_node_names(proto) -> None:
    """Give every unnamed (or duplicate-named) node a unique name, in place; the recipes refer to nodes by name."""
    seen: set[str] = set()
    for i, n in enumerate(proto.graph.node):
        if not n.name or n.name in seen:
            name = f"{n.name or n.op_type}_{i}"
            while name in seen:
                name += "_"
            n.name = name
        seen.add(n.name)
