"""Convert one component to a Core ML ML Program (``.mlpackage``) through ``torch.export``.

1. Enumerate the cases the program must serve: batch 2 and 1 at every declared size (batches only for a
   component whose shapes do not depend on the image size); the output shapes of each case follow from the
   exported program's symbolic shapes.
2. ``torch.export`` from the batch-2 example at the first size; every dimension that takes more than one
   value in (1) is exported dynamic (``Dim.AUTO``: torch infers relations such as latent = image / 8). A
   batch-1 example would make torch specialise the batch to 1, so batch 2 it is. One export serves both
   precisions (:func:`export_component`, then ``convert_component(..., exported=...)``).
3. ``ct.convert(..., convert_to="mlprogram")`` with the workarounds of :mod:`.workarounds`, the graph's IO
   names, float32 IO (fp16 programs cast inside), int32 for integer inputs (Core ML has no int64), and fp16 or
   fp32 compute precision. Shapes: from iOS 18 every input enumerates its shapes (the lists pair up case by
   case); below, Core ML allows one enumerated input per program, so the input with the most distinct shapes
   enumerates and the others take ranges (their batch: 1...2). The trace path (``torch.jit.trace``) is not
   used: it breaks with numpy >= 2.4.
4. Save to a temporary folder beside ``out`` and rename: an interrupted conversion leaves no half package.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from ldm_runtime.errors import UserError

from ...export import ComponentGraph
from .package import DEPLOYMENT_TARGETS, PRECISIONS, ct_target, package_size, save, versions

BATCHES = (2, 1)


@dataclass
class ExportedComponent:
    program: object           # torch.export.ExportedProgram (ATEN dialect)
    cases: list[dict]         # {"args": (batch, w, h), "inputs": {name: shape}, "outputs": {name: shape}}
    seconds: float


def _cases(graph: ComponentGraph, sizes: list[tuple[int, int]]) -> list[dict]:
    """One case per distinct set of input shapes, the export example (batch 2, first size) first."""
    if not sizes:
        raise UserError(f"{graph.name}: no image sizes given; expected at least one (width, height)")
    cases: list[dict] = []
    for (w, h), b in product(sizes if graph.spatial else sizes[:1], BATCHES):
        shapes = {k: tuple(v.shape) for k, v in graph.make_inputs(b, w, h, np.random.default_rng(0)).items()}
        if all(c["inputs"] != shapes for c in cases):
            cases.append({"args": (b, w, h), "inputs": shapes})
    return cases


def _output_shapes(program, graph: ComponentGraph, cases: list[dict]) -> None:
    """Each case's output shapes: the exported program's symbolic output shapes at the case's input shapes."""
    nodes = list(program.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"][-len(graph.inputs):]
    results = nodes[-1].args[0]
    results = results if isinstance(results, (tuple, list)) else (results,)
    for case in cases:
        bindings = {}
        for node, name in zip(placeholders, graph.inputs):
            for d, n in zip(node.meta["val"].shape, case["inputs"][name]):
                if not isinstance(d, int):
                    bindings[d.node.expr] = n
        case["outputs"] = {k: tuple(d if isinstance(d, int) else int(d.node.expr.subs(bindings))
                                    for d in r.meta["val"].shape) for k, r in zip(graph.outputs, results)}


def _check_dynamic(program, graph: ComponentGraph, cases: list[dict], varying: dict[str, list[int]]) -> None:
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"][-len(graph.inputs):]
    for (name, dims), node in zip(varying.items(), placeholders):
        shape = node.meta["val"].shape
        static = [i for i in dims if isinstance(shape[i], int)]
        if static:
            i = static[0]
            raise UserError(f"{graph.name}: torch.export made dimension {i} of '{name}' static ({shape[i]}); got "
                            f"cases needing {sorted({c['inputs'][name][i] for c in cases})}; expected it dynamic; "
                            f"try building one size per bundle")


def export_component(graph: ComponentGraph, sizes: list[tuple[int, int]]) -> ExportedComponent:
    """Steps 1 and 2: the cases, and ``torch.export`` of the wrapper (ATEN dialect, as coremltools needs)."""
    import torch

    t0 = time.perf_counter()
    cases = _cases(graph, sizes)
    varying = {k: [i for i in range(len(cases[0]["inputs"][k])) if len({c["inputs"][k][i] for c in cases}) > 1]
               for k in graph.inputs}
    feeds = graph.make_inputs(*cases[0]["args"], np.random.default_rng(0))
    dynamic = tuple({i: torch.export.Dim.AUTO for i in varying[k]} or None for k in graph.inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(graph.module, tuple(torch.from_numpy(feeds[k]) for k in graph.inputs),
                                      dynamic_shapes=(dynamic,)).run_decompositions({})
    _check_dynamic(program, graph, cases, varying)
    _output_shapes(program, graph, cases)
    return ExportedComponent(program, cases, time.perf_counter() - t0)


def _flexibility(shapes: list[dict[str, tuple[int, ...]]], target: str) -> dict[str, str]:
    """How each input serves its shapes: "enumerated", "range" (each dimension within bounds) or "fixed"."""
    distinct = {k: len(set(s[k] for s in shapes)) for k in shapes[0]}
    if target == "iOS18":
        return {k: "enumerated" if n > 1 else "fixed" for k, n in distinct.items()}
    chosen = max(distinct, key=lambda k: distinct[k])
    return {k: "fixed" if n == 1 else "enumerated" if k == chosen else "range" for k, n in distinct.items()}


def _ct_shape(ct, shapes: list[tuple[int, ...]], flexibility: str):
    if flexibility == "fixed":
        return shapes[0]
    if flexibility == "enumerated":
        return ct.EnumeratedShapes(shapes=list(shapes), default=shapes[0])
    dims = [sorted({s[i] for s in shapes}) for i in range(len(shapes[0]))]
    return ct.Shape([d[0] if len(d) == 1 else ct.RangeDim(d[0], d[-1], default=shapes[0][i])
                     for i, d in enumerate(dims)])


def _check_options(precision: str, deployment_target: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"Core ML precision '{precision}'; expected one of {', '.join(PRECISIONS)}")
    if deployment_target not in DEPLOYMENT_TARGETS:
        raise UserError(f"Core ML deployment target '{deployment_target}'; expected one of "
                        f"{', '.join(DEPLOYMENT_TARGETS)}")


def convert_component(graph: ComponentGraph, sizes: list[tuple[int, int]], *, precision: str = "fp16",
                      deployment_target: str = "macOS14", out: Path,
                      exported: ExportedComponent | None = None) -> dict:
    """Convert ``graph`` to the ML Program ``out`` (a ``.mlpackage`` folder); returns its manifest record.
    ``exported``: the result of :func:`export_component` for the same ``sizes``, to skip the export."""
    import coremltools as ct

    from .workarounds import applied

    _check_options(precision, deployment_target)
    t0 = time.perf_counter()
    exported = exported or export_component(graph, sizes)
    shapes = [c["inputs"] for c in exported.cases]
    flexibility = _flexibility(shapes, deployment_target)
    inputs = [ct.TensorType(name=k, shape=_ct_shape(ct, [s[k] for s in shapes], flexibility[k]),
                            dtype=np.int32 if spec["dtype"].startswith("int") else np.float32)
              for k, spec in graph.inputs.items()]
    outputs = [ct.TensorType(name=k, dtype=np.float32) for k in graph.outputs]
    compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    with applied(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ct.convert(exported.program, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                           minimum_deployment_target=ct_target(deployment_target), compute_precision=compute,
                           skip_model_load=True)
    save(model, out)
    return _record(graph, exported, out, precision, deployment_target, flexibility, time.perf_counter() - t0)


def layout(spec: dict) -> str | None:
    """The axes of a tensor as the programs take it (torch's own order; no ANE-style re-layout): batch, then
    tokens for ids, channels for vectors, tokens × channels for hidden states, channels × height × width for
    images and latents; None for another rank."""
    rank = len(spec["shape"])
    if rank == 2:
        return "NT" if spec["dtype"].startswith("int") else "NC"
    return {1: "N", 3: "NTC", 4: "NCHW"}.get(rank)


def _record(graph: ComponentGraph, exported: ExportedComponent, out: Path, precision: str, target: str,
            flexibility: dict[str, str], seconds: float) -> dict:
    """The manifest record: IO as the graph declares it plus each input's and output's shape per case (the
    ``enumerated`` lists line up case by case), how each input's shapes are served, and the provenance."""
    def io(specs: dict, key: str) -> dict:
        return {k: {**s, "enumerated": [list(c[key][k]) for c in exported.cases],
                    **({"layout": layout(s)} if layout(s) else {})} for k, s in specs.items()}

    return {"file": Path(out).name, "format": "mlprogram", "inputs": io(graph.inputs, "inputs"),
            "outputs": io(graph.outputs, "outputs"), "shape_flexibility": flexibility, "precision": precision,
            "deployment_target": target, "versions": versions(), "size_bytes": package_size(out),
            "export_seconds": round(exported.seconds, 2), "convert_seconds": round(seconds, 2)}
