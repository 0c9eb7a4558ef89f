"""The build-time check of a converted program: the ``coreml-reference`` evaluator against torch.

Batch 2 at every declared size (the first size only for components whose shapes do not depend on it), on the
same random inputs the ONNX export check uses. The gate per precision:

* fp32 programs: the fp32 component tolerance (relative L2 and cosine, ``COMPONENT_TOLERANCES["fp32"]``);
* fp16 programs: the fp16 quality target, >= 35 dB output PSNR against fp32 torch (peak = max |torch|), the gate
  Apple's ml-stable-diffusion converter applies to its Core ML models.

A program that misses it is a conversion that does not compute the model: the build stops, naming the
component, the size and the output (exit 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ldm_runtime.errors import BelowTolerance
from ldm_runtime.metrics import compare, tensor_psnr
from ldm_runtime.runners.coreml_reference import CoreMLReferenceRunner
from ldm_runtime.tolerances import component_tolerance, quality_target

from ...export import ComponentGraph, torch_outputs


def _miss(precision: str, component: str, m: dict) -> str | None:
    """Why metrics ``m`` miss the gate of ``precision``, or None."""
    if precision == "fp32":
        tol = component_tolerance("fp32", component)
        if m["rel_l2"] <= tol.rel_l2 and m["cosine"] >= tol.min_cosine:
            return None
        return f"rel L2 {m['rel_l2']:.3g} > {tol.rel_l2:g} or cosine {m['cosine']:.6f} < {tol.min_cosine}"
    floor = quality_target(precision).component_psnr_db
    assert floor is not None
    return None if m["psnr_db"] >= floor else f"{m['psnr_db']:.2f} dB < {floor:g} dB"


def check_program(graph: ComponentGraph, path: Path, record: dict, sizes: list[tuple[int, int]],
                  precision: str) -> list[dict]:
    """Rows of the check (one per size and output); raises :class:`BelowTolerance` on the first miss."""
    rows = []
    with CoreMLReferenceRunner(graph.name, path, record) as runner:
        for w, h in sizes if graph.spatial else sizes[:1]:
            feeds = graph.make_inputs(2, w, h, np.random.default_rng(1))
            got = runner.run(feeds)
            for name, ref in torch_outputs(graph, feeds).items():
                m = {**compare(got[name], ref), "psnr_db": tensor_psnr(got[name], ref)}
                size = f"{w}x{h}" if graph.spatial else "-"
                miss = _miss(precision, graph.name, m)
                if miss:
                    raise BelowTolerance(f"{graph.name} at {size}: the {precision} Core ML program differs from "
                                         f"torch in '{name}' ({miss}, max abs {m['max_abs']:.3g}); the conversion "
                                         f"does not compute this model: try --precision fp32, or report it")
                rows.append({"component": graph.name, "output": name, "size": size, "backend": "coreml-reference",
                             **m, "psnr_db": round(m["psnr_db"], 2) if math.isfinite(m["psnr_db"]) else None})
    return rows
