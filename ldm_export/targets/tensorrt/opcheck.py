"""Static check of ONNX graphs against TensorRT's ONNX parser, for the bundle's minimum TensorRT.

A TensorRT bundle ships ONNX graphs that devices turn into engines with their own TensorRT, so
a graph must parse on the oldest TensorRT the bundle promises (10.3 by default: JetPack 6.1-6.2).
The parser imports node by node, each op type by its own importer, so the check is per node:

1. resolve the node's op schema version from the model's opset imports (``onnx.defs``): a
   GroupNormalization in an opset-21 model is GroupNormalization-21, in an opset-18 model -18;
2. refuse an op type the parser does not list, an op version newer than it parses (the table's
   opset bound, or the op's own bound where one is known), and any domain but ai.onnx (TensorRT
   would need a plugin);
3. walk into If/Loop/Scan bodies and model-local functions.

The table per version range is taken from onnx-tensorrt's docs/operators.md and changelog
(release/10.0-10.1 operator matrix "opset 9 to opset 20"; 10.4 window functions; 10.5 STFT;
10.9 "opset 21 GroupNorm"; 10.14 Attention; 10.15 RotaryEmbedding, RMSNormalization,
TensorScatter and "opset 9 to opset 24"; 11.5 opset 25). Between documented bounds the last
documented one is kept, so the check can refuse a node a newer parser would take, not the reverse
for op type and version. The operator matrix's per-op restrictions (attribute values, constant
inputs) are not checked here; the device's parser reports those when ``ldm-run prepare`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from ldm_runtime.errors import UserError
from ldm_runtime.tensorrt.versions import MINIMUM, TrtVersion

DEFAULT_DOMAINS = ("", "ai.onnx")

# the "Y" rows of onnx-tensorrt's operator matrix at release/10.0 and 10.1
_OPS_10_0 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


@dataclass(frozen=True)
class ParserSupport:
    """What the ONNX parser of TensorRT ``since`` (and later, until the next row) imports."""

    since: TrtVersion
    max_opset: int                                           # newest op schema version it parses
    ops: frozenset[str]
    op_max_version: Mapping[str, int] = field(default_factory=dict)   # per-op bound, over max_opset
    source: str = ""

    def limit(self, op: str) -> int:
        return self.op_max_version.get(op, self.max_opset)


def _row(prev: ParserSupport, since: str, source: str, max_opset: int | None = None, add: str = "",
         versions: Mapping[str, int] | None = None) -> ParserSupport:
    return ParserSupport(TrtVersion.parse(since), max_opset or prev.max_opset, prev.ops | frozenset(add.split()),
                         {**prev.op_max_version, **(versions or {})}, source)


_R10_0 = ParserSupport(TrtVersion(10, 0), 20, _OPS_10_0, {"GroupNormalization": 18},
                       "operators.md release/10.0-10.1: opset 9 to 20; GroupNormalization-18 (8.6+)")
_R10_4 = _row(_R10_0, "10.4", "changelog 10.4: BlackmanWindow, HammingWindow, HannWindow",
              add="BlackmanWindow HammingWindow HannWindow")
_R10_5 = _row(_R10_4, "10.5", "changelog 10.5: real-valued STFT", add="STFT")
_R10_9 = _row(_R10_5, "10.9", "changelog 10.9: opset 21 GroupNorm", versions={"GroupNormalization": 21})
_R10_14 = _row(_R10_9, "10.14", "changelog 10.14: the Attention operator", add="Attention",
               versions={"Attention": 23})
_R10_15 = _row(_R10_14, "10.15", "operators.md 10.15: opset 9 to 24; RotaryEmbedding, RMSNormalization, "
               "TensorScatter", max_opset=24, add="RotaryEmbedding RMSNormalization TensorScatter")
_R11_5 = _row(_R10_15, "11.5", "11.5 release notes: ONNX opset 25", max_opset=25)
PARSER_SUPPORT: tuple[ParserSupport, ...] = (_R10_0, _R10_4, _R10_5, _R10_9, _R10_14, _R10_15, _R11_5)


def parser_support(version: str | TrtVersion) -> ParserSupport:
    """The table row in force for TensorRT ``version`` (10.0 or newer)."""
    v = TrtVersion.parse(version)
    rows = [r for r in PARSER_SUPPORT if r.since <= v]
    if not rows:
        raise UserError(f"no ONNX-parser table for TensorRT {v}; expected {MINIMUM.short} or newer")
    return rows[-1]


@dataclass(frozen=True)
class UnsupportedNode:
    node: str          # the node's name ("#index" when it has none)
    op_type: str
    domain: str        # "ai.onnx" for the default domain
    opset: int | None  # the op's schema version in this model (None: unknown to ONNX)
    reason: str
    first_supported: TrtVersion | None = None   # the first TensorRT in the table that parses it

    def describe(self) -> str:
        where = f"{self.domain} opset {self.opset}" if self.opset is not None else f"domain {self.domain}"
        since = f"; parsed from TensorRT {self.first_supported.short}" if self.first_supported else ""
        return f"'{self.node}' ({self.op_type}, {where}: {self.reason}{since})"


def _schema_version(op: str, domain: str, opset: int) -> int | None:
    """Step 1: the since-version of the schema of ``op`` in force at ``opset`` (None: no such op)."""
    from onnx import defs

    try:
        return int(defs.get_schema(op, opset, "" if domain in DEFAULT_DOMAINS else domain).since_version)
    except defs.SchemaError:
        return None


def _verdict(op: str, version: int | None, opset: int, row: ParserSupport) -> str | None:
    """Step 2 for a default-domain node: why ``row``'s parser refuses it, or None."""
    if version is None:
        return f"no such operator at opset {opset}"
    if op not in row.ops:
        return "not an operator this parser imports"
    if version > row.limit(op):
        return f"this parser reads {op} up to opset {row.limit(op)}"
    return None


def _first_supported(op: str, version: int | None, opset: int) -> TrtVersion | None:
    return next((r.since for r in PARSER_SUPPORT if _verdict(op, version, opset, r) is None), None)


def _subgraphs(node: Any) -> Iterator[tuple[str, Any]]:
    """(attribute name, graph) of the bodies of If/Loop/Scan."""
    from onnx import AttributeProto

    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == AttributeProto.GRAPHS:
            yield from ((f"{a.name}[{i}]", g) for i, g in enumerate(a.graphs))


def _walk(graph: Any, opsets: dict[str, int], functions: dict[tuple[str, str], Any], row: ParserSupport,
          out: list[UnsupportedNode], prefix: str = "") -> None:
    for i, node in enumerate(graph.node):
        name = prefix + (node.name or f"#{i}")
        domain = node.domain or ""
        local = functions.get((domain, node.op_type))
        if local is not None:  # 3. a model-local function: check its body with its own opsets
            fn_opsets = {o.domain or "": o.version for o in local.opset_import} or opsets
            _walk(local, fn_opsets, functions, row, out, prefix=f"{name}/")
            continue
        if domain not in DEFAULT_DOMAINS:
            out.append(UnsupportedNode(name, node.op_type, domain, None,
                                       "not the ai.onnx domain (TensorRT would need a plugin)"))
            continue
        opset = opsets.get("", opsets.get("ai.onnx", 0))
        version = _schema_version(node.op_type, domain, opset)
        why = _verdict(node.op_type, version, opset, row)
        if why:
            out.append(UnsupportedNode(name, node.op_type, "ai.onnx", version, why,
                                       _first_supported(node.op_type, version, opset)))
        for attr, sub in _subgraphs(node):
            _walk(sub, opsets, functions, row, out, prefix=f"{name}/{attr}/")


def _load(model: Any) -> Any:
    import onnx

    return onnx.load(str(model), load_external_data=False) if isinstance(model, (str, Path)) else model


def unsupported_nodes(model: Any, min_tensorrt: str | TrtVersion = MINIMUM) -> list[UnsupportedNode]:
    """Every node of ``model`` (a ModelProto or an .onnx path) that TensorRT ``min_tensorrt``'s ONNX
    parser cannot take, in graph order."""
    m = _load(model)
    row = parser_support(min_tensorrt)
    opsets = {o.domain or "": int(o.version) for o in m.opset_import}
    functions = {(f.domain or "", f.name): f for f in m.functions}
    out: list[UnsupportedNode] = []
    _walk(m.graph, opsets, functions, row, out)
    return out


def check_graph(path: Path, min_tensorrt: str | TrtVersion = MINIMUM) -> None:
    """Refuse a graph with unsupported nodes in one line that names each of them."""
    bad = unsupported_nodes(path, min_tensorrt)
    if bad:
        v = TrtVersion.parse(min_tensorrt)
        newest = [b.first_supported for b in bad]
        hint = (f"--min-tensorrt {max(n for n in newest if n).short}" if all(newest) else
                "replacing those nodes (TensorRT would need plugins)")
        raise UserError(f"{Path(path).name}: TensorRT {v.short}'s ONNX parser cannot take {len(bad)} node(s): "
                        f"{', '.join(b.describe() for b in bad)}; expected the opset-17 export (attention as "
                        f"MatMul/Softmax); try re-exporting at opset 17 or {hint}")


def check_bundle_graphs(root: Path, manifest: dict[str, Any], min_tensorrt: str | TrtVersion = MINIMUM) -> None:
    """:func:`check_graph` for every component of a bundle."""
    for spec in manifest["components"].values():
        check_graph(Path(root) / spec["file"], min_tensorrt)
