"""Weight-only int8: int8 weights (and embedding tables) feeding a DequantizeLinear, float compute."""

from __future__ import annotations

import numpy as np


def _weight_only(model, targets: list[tuple[str, int, str]]):
    """Replace each (initializer, axis, consumer-op) weight by int8 + DequantizeLinear (symmetric, one scale per
    slice along ``axis``); the consumers compute in float."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    done = {}
    new_nodes = []
    for name, axis, _op in targets:
        if name in done:
            continue
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=red)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        qw = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        qn, sn, zn, dq = f"{name}_int8", f"{name}_scale", f"{name}_zero_point", f"{name}_dequantized"
        g.initializer.remove(inits[name])
        g.initializer.extend([numpy_helper.from_array(qw, qn), numpy_helper.from_array(scale, sn),
                              numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), zn)])
        new_nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dq], name=f"{name}_DequantizeLinear",
                                          axis=axis))
        done[name] = dq
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in done:
                n.input[i] = done[x]
    # DequantizeLinear nodes first: their inputs are all initializers, so the order stays topological
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return model


def _gather_tables(model) -> list[tuple[str, int, str]]:
    """Embedding tables: 2-D float initializers read only by Gather as its data input (per-row scales)."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for k, x in enumerate(n.input):
            if x in inits:
                readers.setdefault(x, []).append((n, k))
    out = []
    for name, r in readers.items():
        t = inits[name]
        if t.data_type == 1 and len(t.dims) == 2 and all(n.op_type == "Gather" and k == 0
                                                         and _gather_axis(n) == 0 for n, k in r):
            out.append((name, 0, "Gather"))
    return out


def _gather_axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)
