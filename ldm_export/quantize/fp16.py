"""fp16 with fp32 inputs/outputs, and an automatic scan that keeps in fp32 the nodes fp16 cannot carry.

Two measurements on the calibration feeds decide which nodes stay in fp32 (see docs/quantization.md):

1. **Range** (fp32 graph): max |x| of every float tensor. A tensor above ``65504 / margin`` would overflow (or
   come close to overflowing on inputs unlike the feeds) in fp16, so its producer and every node that
   consumes it are kept in fp32 — the consumers too, because a value above the fp16 range cannot even be
   handed over in fp16.
2. **Error** (fp16 graph against fp32, repeated until nothing changes): for every node, the relative L2 error
   of its output, ``e_out = ||y16 − y32|| / ||y32||`` over the feeds, and the largest such error among its
   inputs, ``e_in``. A node whose error is not explained by its inputs — ``e_out > error_tol`` and
   ``e_out > error_ratio · e_in`` (non-finite outputs count as infinite error) — is kept in fp32. If that
   node already is in fp32, its own arithmetic is not the cause: rounding its inputs to fp16 is (``Sin`` of a
   timestep argument near 1000 is the standard case), so the nearest fp16 nodes upstream of it (walking through
   fp32 nodes) whose outputs differ from fp32 are kept too.

Both measurements add reductions to the graph (``ReduceMax(Abs(x))``, ``ReduceSumSquare`` of differences in
one graph holding the fp32 and fp16 copies side by side), so only scalars leave ONNX Runtime and memory stays
that of one run.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np

from ldm_runtime.errors import UserError
from ldm_runtime.jsonio import json_number

from ..onnx_io import external_data_files, load, model_size_bytes, save
from .common import (Feeds, Report, Session, _say, ensure_node_names, float_tensor_types, infer_types, output_metrics, run_onnx)

FP16_MAX = 65504.0
FLOAT, FLOAT16 = 1, 10
DEFAULT_MARGIN = 2.0
DEFAULT_ERROR_TOL = 1e-2
DEFAULT_ERROR_RATIO = 8.0


def fp16(onnx_in: str | Path, onnx_out: str | Path, feeds: Feeds, *, scan: bool = True,
         margin: float = DEFAULT_MARGIN, error_tol: float = DEFAULT_ERROR_TOL,
         error_ratio: float = DEFAULT_ERROR_RATIO, max_rounds: int = 8, keep: tuple[str, ...] = (),
         threads: int | None = None, report: Report = None) -> dict:
    """Write an fp16 version of ``onnx_in`` (fp32 inputs and outputs) to ``onnx_out``; returns the recipe.

    ``scan``: run the range and error scans on ``feeds`` (module docstring) and keep the nodes they find in
    fp32; without it only ``keep`` (node names) and the converter's default op block list stay in fp32.
    ``margin``: a tensor counts as overflowing above ``65504 / margin``. ``error_tol``/``error_ratio``: the
    error criterion. ``threads``: ORT intra-op threads for the scans (None: ORT's default).
    """
    t0 = time.perf_counter()
    feeds = list(feeds)  # any iterable of feed dicts (a calibration set's generator too)
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    src = load(onnx_in)
    ensure_node_names(src)
    typed = infer_types(src)
    types = float_tensor_types(typed)
    op = {n.name: n.op_type for n in typed.graph.node}
    unknown = [n for n in keep if n not in op]
    if unknown:
        raise UserError(f"keep names nodes {onnx_in.name} does not have: {', '.join(unknown[:5])}")
    kept: dict[str, dict] = {n: {"node": n, "op_type": op[n], "reason": "requested"} for n in keep}
    rounds: list[dict] = []
    if scan:
        _check_scannable(onnx_in, typed, feeds)
        stats_range = _range_scan(typed, types, feeds, margin, kept, threads, report)
        model = _error_scan(typed, types, feeds, kept, stats_range, (error_tol, error_ratio, max_rounds), rounds,
                            threads, report)
    else:
        model = _convert(typed, sorted(kept))
    files = save(model, onnx_out, external=bool(external_data_files(onnx_in)))
    ref = run_onnx(onnx_in, feeds, threads=threads) if feeds else []
    got = run_onnx(onnx_out, feeds, threads=threads) if feeds else []
    n_nodes = len(typed.graph.node)
    return {
        "method": "fp16",
        "tool": "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True) + fp32 round-trip "
                "Cast removal between fp32 nodes",
        "parameters": {"scan": scan, "margin": margin, "overflow_limit": FP16_MAX / margin,
                       "error_tol": error_tol, "error_ratio": error_ratio, "max_rounds": max_rounds,
                       "keep": list(keep), "feeds": len(feeds)},
        "io": "float32 inputs and outputs; fp16 inside except the nodes listed in kept_fp32",
        "kept_fp32": list(kept.values()),
        "nodes": {"total": n_nodes, "fp32": len(kept), "fp16": n_nodes - len(kept)},
        "error_rounds": rounds,
        "files": files,
        "size_bytes": {"fp32": model_size_bytes(onnx_in), "fp16": model_size_bytes(onnx_out)},
        "vs_fp32": output_metrics(ref, got) if feeds else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _check_scannable(onnx_in: Path, typed, feeds: list) -> None:
    if not feeds:
        raise UserError("the fp16 overflow scan needs calibration feeds (or pass scan=False)")
    if any(a.type in (5, 10) for n in typed.graph.node for a in n.attribute):  # GRAPH, GRAPHS
        raise UserError(f"{onnx_in.name} has control-flow subgraphs, which the fp16 scan does not follow; "
                        "pass scan=False and keep= the nodes to leave in fp32")


def _range_scan(typed, types, feeds: list, margin: float, kept: dict, threads, report) -> dict[str, float]:
    """Measurement 1: keep (in ``kept``) the producer and consumers of every tensor above ``65504 / margin``;
    returns max |x| per tensor."""
    op = {n.name: n.op_type for n in typed.graph.node}
    _say(report, f"fp16 range scan: max |x| of every tensor over {len(feeds)} feeds")
    stats_range = _absmax(typed, types, feeds, threads)
    limit = FP16_MAX / margin
    producer, consumers = _graph_maps(typed)
    for t, m in sorted(stats_range.items(), key=lambda kv: -kv[1] if math.isfinite(kv[1]) else -math.inf):
        if not (m > limit):
            continue
        for n in ([producer[t]] if t in producer else []) + consumers.get(t, []):
            if n not in kept:
                kept[n] = {"node": n, "op_type": op[n], "reason": "range", "tensor": t,
                           "max_abs": json_number(m), "limit": limit}
    _say(report, f"fp16 range scan: {len(kept)} nodes kept in fp32 (|x| > {limit:g})")
    return stats_range


def _error_scan(typed, types, feeds: list, kept: dict, stats_range: dict, rule: tuple[float, float, int],
                rounds: list, threads, report):
    """Measurement 2, repeated until no node is added (at most ``max_rounds``); returns the fp16 model."""
    error_tol, error_ratio, max_rounds = rule
    model = _convert(typed, sorted(kept))
    node_by_name = {n.name: n for n in typed.graph.node}
    producer, _ = _graph_maps(typed)
    for r in range(max_rounds):
        errors = _errors(typed, types, model, feeds, threads)
        added = _error_rule(typed, node_by_name, producer, errors, kept, error_tol, error_ratio, stats_range, r)
        rounds.append({"round": r + 1, "added": added, "worst_fp16": _worst(errors, typed, kept)})
        _say(report, f"fp16 error scan round {r + 1}: {len(added)} more nodes kept in fp32")
        if not added:
            break
        model = _convert(typed, sorted(kept))
    return model


# ------------------------------------------------------------------------------------------- pieces

def _graph_maps(proto) -> tuple[dict[str, str], dict[str, list[str]]]:
    """tensor → producing node name; tensor → consuming node names (top-level graph)."""
    producer, consumers = {}, {}
    for n in proto.graph.node:
        for o in n.output:
            if o:
                producer[o] = n.name
        for i in n.input:
            if i:
                consumers.setdefault(i, [])
                if n.name not in consumers[i]:
                    consumers[i].append(n.name)
    return producer, consumers


def _convert(typed, block: list[str]):
    """fp16 conversion of the (type-inferred) fp32 model with ``block`` kept in fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(copy.deepcopy(typed), keep_io_types=True, node_block_list=list(block),
                                 disable_shape_infer=True)
    _remove_cast_round_trips(m, set(block))
    return m


def _remove_cast_round_trips(model, fp32_nodes: set[str]) -> None:
    """Between two fp32 nodes the converter routes the tensor through fp16 (Cast to fp16, Cast back):
    lossy, and it overflows exactly the values the scan keeps in fp32. Consumers of such a pair read the
    fp32 tensor directly; Casts left without consumers are removed."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    fp32_sources = ({i.name for i in g.input if i.type.tensor_type.elem_type == FLOAT}
                    | {t.name for t in g.initializer if t.data_type == FLOAT})

    def to(n):
        return next((a.i for a in n.attribute if a.name == "to"), None)

    replace = {}
    for n in g.node:
        if n.op_type == "Cast" and to(n) == FLOAT:
            p = producer.get(n.input[0])
            if p is not None and p.op_type == "Cast" and to(p) == FLOAT16 and n.output[0] not in outputs:
                src = p.input[0]
                s = producer.get(src)
                # only when the round trip starts from fp32: a kept node's output, a Cast to fp32, an fp32
                # graph input or initializer
                if (src in fp32_sources if s is None
                        else s.name in fp32_nodes or (s.op_type == "Cast" and to(s) == FLOAT)):
                    replace[n.output[0]] = src
    if not replace:
        return
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in replace:
                n.input[i] = replace[name]
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)


def _float_outputs(proto, types) -> list[tuple[str, str]]:
    """(node name, tensor) for every float tensor a node produces."""
    return [(n.name, o) for n in proto.graph.node for o in n.output if o and types.get(o) == FLOAT]


def _scalar_output(name):
    from onnx import helper

    return helper.make_tensor_value_info(name, FLOAT, None)


def _absmax(typed, types, feeds: Feeds, threads) -> dict[str, float]:
    """max |x| over the feeds of every float tensor (graph inputs and node outputs)."""
    from onnx import helper

    m = copy.deepcopy(typed)
    g = m.graph
    del g.output[:]
    names = [i.name for i in g.input if types.get(i.name) == FLOAT] + [t for _, t in _float_outputs(typed, types)]
    outs = {}
    for k, t in enumerate(names):
        a, r = f"__absmax_abs_{k}", f"__absmax_{k}"
        g.node.extend([helper.make_node("Abs", [t], [a]), helper.make_node("ReduceMax", [a], [r], keepdims=0)])
        g.output.append(_scalar_output(r))
        outs[r] = t
    result = {t: 0.0 for t in names}
    with Session(m, threads) as s:
        for f in feeds:
            for r, v in s.run(f).items():
                v = float(np.asarray(v).max()) if np.asarray(v).size else 0.0
                t = outs[r]
                result[t] = math.inf if not math.isfinite(v) else max(result[t], v)
    return result


def _errors(typed, types, fp16_model, feeds: Feeds, threads) -> dict[str, float]:
    """Relative L2 error over all feeds of every float node output of the fp16 model against fp32, by the
    fp32 tensor name. One graph runs both copies; only sums of squares come out."""
    m, pairs = _side_by_side(typed, types, fp16_model)
    sums = {key: [0.0, 0.0] for key in pairs}
    with Session(m, threads) as s:
        for f in feeds:
            vals = s.run(f)
            for key, (d, r) in pairs.items():
                sums[key][0] += float(vals[d])
                sums[key][1] += float(vals[r])
    out = {}
    for key, (d, r) in sums.items():
        k, j = (int(v) for v in key.split("_"))
        if not math.isfinite(d):
            e = math.inf
        elif r > 0:
            e = math.sqrt(d / r)
        else:
            e = 0.0 if d == 0 else math.inf
        out[typed.graph.node[k].output[j]] = e
    return out


def _side_by_side(typed, types, fp16_model):
    """One graph computing the fp32 model and (renamed ``__h16/…``) the fp16 one on the same inputs, whose
    outputs are, per float node output, ReduceSumSquare of the difference and of the fp32 value; returns it
    and those output pairs by ``<node index>_<output index>``."""
    from onnx import helper

    m = copy.deepcopy(typed)
    g = m.graph
    del g.output[:]
    inputs = {i.name for i in g.input}

    def rename(x: str) -> str:
        return x if (not x or x in inputs) else f"__h16/{x}"

    h_nodes = {}
    for n in fp16_model.graph.node:
        c = copy.deepcopy(n)
        c.name = f"__h16/{n.name}"
        for i, x in enumerate(c.input):
            c.input[i] = rename(x)
        for i, x in enumerate(c.output):
            c.output[i] = rename(x)
        g.node.append(c)
        h_nodes[n.name] = c
    for t in fp16_model.graph.initializer:
        c = copy.deepcopy(t)
        c.name = rename(t.name)
        g.initializer.append(c)
    pairs: dict[str, tuple[str, str]] = {}
    for k, n in enumerate(typed.graph.node):
        h = h_nodes.get(n.name)
        if h is None:
            continue
        for j, o in enumerate(n.output):
            if not o or types.get(o) != FLOAT or j >= len(h.output):
                continue
            key = f"{k}_{j}"
            c, d, ss_d, ss_r = (f"__err_c_{key}", f"__err_d_{key}", f"__err_ssd_{key}", f"__err_ssr_{key}")
            g.node.extend([helper.make_node("Cast", [h.output[j]], [c], to=FLOAT),
                           helper.make_node("Sub", [c, o], [d]),
                           helper.make_node("ReduceSumSquare", [d], [ss_d], keepdims=0),
                           helper.make_node("ReduceSumSquare", [o], [ss_r], keepdims=0)])
            g.output.extend([_scalar_output(ss_d), _scalar_output(ss_r)])
            pairs[key] = (ss_d, ss_r)
    return m, pairs


def _error_rule(typed, node_by_name, producer, errors, kept, tol, ratio, stats_range, round_index) -> list[str]:
    """Apply the error criterion (module docstring); adds to ``kept`` and returns the nodes added."""
    added = []
    for n in typed.graph.node:
        outs = [errors[o] for o in n.output if o in errors]
        if not outs:
            continue
        e_out = max(outs)
        e_in = max((errors[i] for i in n.input if i in errors), default=0.0)
        if not (e_out > tol and e_out > ratio * e_in):
            continue
        info = {"op_type": n.op_type, "error_out": json_number(e_out), "error_in": json_number(e_in), "round": round_index + 1,
                "max_abs": json_number(max((stats_range.get(o, 0.0) for o in n.output), default=0.0))}
        if n.name not in kept:
            kept[n.name] = {"node": n.name, "reason": "fp16 error", **info}
            added.append(n.name)
            continue
        for p in _fp16_sources(n, node_by_name, producer, errors, kept):
            kept[p] = {"node": p, "op_type": node_by_name[p].op_type, "reason": f"fp16 input of {n.name}",
                       **{k: v for k, v in info.items() if k != "op_type"}}
            added.append(p)
    return added


def _fp16_sources(node, node_by_name, producer, errors, kept) -> list[str]:
    """The nearest fp16 nodes upstream of ``node`` (walking through fp32 nodes) whose outputs carry an error."""
    found, seen, stack = [], set(), [node]
    while stack:
        n = stack.pop()
        for i in n.input:
            p = producer.get(i)
            if p is None or p in seen or errors.get(i, 0.0) == 0.0:
                continue
            seen.add(p)
            if p in kept:
                stack.append(node_by_name[p])
            else:
                found.append(p)
    return found


def _worst(errors, typed, kept, k: int = 5) -> list[dict]:
    """The k fp16 nodes with the largest output error (for the recipe)."""
    rows = []
    for n in typed.graph.node:
        e = [errors[o] for o in n.output if o in errors]
        if e and n.name not in kept:
            rows.append((max(e), n.name, n.op_type))
    rows.sort(key=lambda r: -r[0] if math.isfinite(r[0]) else -math.inf)
    return [{"node": n, "op_type": op, "error_out": json_number(e)} for e, n, op in rows[:k]]
