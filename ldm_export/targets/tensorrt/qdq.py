"""Check that a graph's int8 Q/DQ nodes are what TensorRT's explicit quantization takes.

TensorRT quantizes symmetrically (int8, zero point 0) and fuses a DequantizeLinear into the layer
that reads it: activations per tensor, weights per output channel. Its guidance, which our
``--int8-layout tensorrt`` recipe follows, puts Q/DQ on the inputs of the weighted layers only. Each
QuantizeLinear/DequantizeLinear node is classified by the role it plays:

* ``activation``: a Q -> DQ pair whose DQ feeds the data input of a Conv, ConvTranspose, Gemm or
  MatMul (per-tensor scale);
* ``weight``: a DQ of an int8 initializer feeding the weight input of such a layer whose data input
  is quantized too (an int8 kernel), scale per tensor or along the output-channel axis
  (Conv 0, ConvTranspose 1, MatMul 1, Gemm 0 with transB else 1);
* ``weight-only``: the same DQ where the layer's data input is float: int8 storage, float compute
  (the ``int8-weight-only`` text-encoder recipe);
* ``embedding table``: a DQ of an int8 initializer feeding a Gather's data input (weight-only
  embedding tables): dequantized on its own, a gather in float.

Problems (each named by node): a zero point that is not 0 or not int8 (TensorRT's parser refuses
them), a non-scalar activation scale, a weight scale along the wrong axis, a Q not followed by a DQ,
a DQ whose input is neither an int8 initializer nor a Q output, and a DQ feeding any other op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldm_runtime.errors import UserError

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QdqFinding:
    node: str
    op_type: str
    role: str                                  # activation | weight | weight-only | embedding table | misplaced
    problems: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class QdqReport:
    findings: tuple[QdqFinding, ...]

    @property
    def violations(self) -> list[QdqFinding]:
        return [f for f in self.findings if f.problems]

    def roles(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.role] = out.get(f.role, 0) + 1
        return out


class _Graph:
    """Producers, readers and initializers of one graph."""

    def __init__(self, graph: Any):
        from onnx import numpy_helper

        self.inits = {t.name: t for t in graph.initializer}
        self.array = lambda name: numpy_helper.to_array(self.inits[name])
        self.producer = {o: n for n in graph.node for o in n.output}
        self.readers: dict[str, list[tuple[Any, int]]] = {}
        for n in graph.node:
            for k, x in enumerate(n.input):
                self.readers.setdefault(x, []).append((n, k))


def _attr(node: Any, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _zero_point_problems(g: _Graph, node: Any) -> list[str]:
    from onnx import TensorProto

    if len(node.input) < 3 or not node.input[2]:
        return []  # absent: 0, and the output type defaults to uint8 only for Q without zero point
    zp = node.input[2]
    if zp not in g.inits:
        return [f"zero point '{zp}' is not a constant"]
    out = []
    if g.inits[zp].data_type != TensorProto.INT8:
        out.append(f"zero point type {TensorProto.DataType.Name(g.inits[zp].data_type)} (expected INT8, symmetric)")
    if (g.array(zp) != 0).any():
        out.append("zero point is not 0 (asymmetric)")
    return out


def _weight_axis(reader: Any, g: _Graph) -> int:
    if reader.op_type == "Conv":
        return 0
    if reader.op_type == "ConvTranspose":
        return 1
    if reader.op_type == "Gemm":
        return 0 if _attr(reader, "transB", 0) else 1
    return 1  # MatMul with a 2-D B [K, N]: one scale per output column


def _scale_is_scalar(g: _Graph, node: Any) -> bool:
    s = node.input[1]
    return s in g.inits and g.array(s).size == 1


def _is_activation_dq(g: _Graph, name: str) -> bool:
    p = g.producer.get(name)
    return p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in g.inits


def _quantize(g: _Graph, node: Any) -> QdqFinding:
    problems = _zero_point_problems(g, node)
    if len(node.input) < 3 or not node.input[2]:
        problems.append("no zero point: QuantizeLinear then outputs uint8; TensorRT takes int8 (zero point 0)")
    if node.input[0] not in g.inits and not _scale_is_scalar(g, node):
        problems.append("activation scale is not per tensor")
    for reader, _ in g.readers.get(node.output[0], []):
        if reader.op_type != "DequantizeLinear":
            problems.append(f"its output feeds '{reader.name}' ({reader.op_type}), not a DequantizeLinear")
    role = "weight" if node.input[0] in g.inits else "activation"
    return QdqFinding(node.name, node.op_type, role, tuple(problems))


def _activation_reader_problem(g: _Graph, reader: Any, k: int) -> str | None:
    if reader.op_type in WEIGHTED and k == 0:
        return None
    if reader.op_type == "MatMul" and k == 1 and _is_activation_dq(g, reader.input[0]):
        return None  # both MatMul inputs quantized: an int8 MatMul
    return (f"feeds input {k} of '{reader.name}' ({reader.op_type}); expected the data input of a "
            f"{'/'.join(WEIGHTED)}")


def _weight_role(g: _Graph, node: Any, reader: Any, k: int) -> tuple[str, str | None]:
    """(role, problem) of a weight DQ for one reader."""
    if reader.op_type == "Gather" and k == 0:
        return "embedding table", None
    if reader.op_type not in WEIGHTED or k != 1:
        return "misplaced", (f"dequantized weights feed input {k} of '{reader.name}' ({reader.op_type}); "
                             f"expected the weight input of a {'/'.join(WEIGHTED)}")
    role = "weight" if _is_activation_dq(g, reader.input[0]) else "weight-only"
    if not _scale_is_scalar(g, node):
        want, axis = _weight_axis(reader, g), _attr(node, "axis", 1)
        rank = g.array(node.input[0]).ndim
        if axis % rank != want:
            return role, f"per-channel scale along axis {axis}; {reader.op_type} weights need axis {want}"
    return role, None


def _dequantize(g: _Graph, node: Any) -> QdqFinding:
    from onnx import TensorProto

    problems = _zero_point_problems(g, node)
    src = node.input[0]
    readers = g.readers.get(node.output[0], [])
    if src in g.inits:
        if g.inits[src].data_type != TensorProto.INT8:
            problems.append(f"weights stored as {TensorProto.DataType.Name(g.inits[src].data_type)}; expected INT8")
        roles = set()
        for reader, k in readers:
            role, problem = _weight_role(g, node, reader, k)
            roles.add(role)
            if problem:
                problems.append(problem)
        if len(roles) != 1:
            problems.append("its output is not read" if not roles else
                            f"it feeds readers of different kinds ({', '.join(sorted(roles))})")
        role = roles.pop() if len(roles) == 1 else "misplaced"
        return QdqFinding(node.name, node.op_type, role, tuple(problems))
    producer = g.producer.get(src)
    if producer is None or producer.op_type != "QuantizeLinear":
        problems.append("its input is neither an int8 initializer nor a QuantizeLinear output")
    if not _scale_is_scalar(g, node):
        problems.append("activation scale is not per tensor")
    problems += [p for r, k in readers if (p := _activation_reader_problem(g, r, k))]
    return QdqFinding(node.name, node.op_type, "activation", tuple(problems))


def check_qdq(model: Any) -> QdqReport:
    """Classify every Q/DQ node of ``model`` (a ModelProto or an .onnx path) by its role and problems."""
    import onnx

    m = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    g = _Graph(m.graph)
    findings = [(_quantize if n.op_type == "QuantizeLinear" else _dequantize)(g, n)
                for n in m.graph.node if n.op_type in QDQ]
    return QdqReport(tuple(findings))


def require_tensorrt_qdq(path: Path) -> QdqReport:
    """:func:`check_qdq`, refusing in one line (naming the first nodes) when any node has a problem."""
    report = check_qdq(path)
    bad = report.violations
    if bad:
        named = "; ".join(f"'{f.node}' ({f.op_type}): {', '.join(f.problems)}" for f in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(f"{Path(path).name}: {len(bad)} Q/DQ node(s) TensorRT's explicit quantization would not "
                        f"take as placed: {named}{more}; try --int8-layout tensorrt")
    return report
