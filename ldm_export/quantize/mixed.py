"""Sensitivity-driven mixed precision: int8 (static QDQ) everywhere except the blocks that cost the most
accuracy, chosen to meet an output-PSNR target.

1. The weighted nodes (:func:`.common.weighted_nodes`) are grouped into blocks from their ONNX node names
   (:func:`.common.block_names`); calibration ranges are computed once.
2. Sensitivity: for each block, the output PSNR against fp32 when *only* that block is int8, on an evenly
   spaced subset of the feeds. Lower PSNR = more sensitive.
3. Blocks are taken most-sensitive first into the fp32 candidate list, skipping any block that would push the
   fp32 share of the quantizable weights above ``max_fp32_fraction``. Keeping the first *k* candidates in fp32
   is configuration *k*; the smallest *k* whose output PSNR over all feeds meets the target is found by
   bisection (PSNR is assumed to grow with *k*; the chosen configuration is measured, never extrapolated).
4. If even all candidates in fp32 miss the target, :class:`UserError` says the best PSNR reached and what it
   kept in fp32.

Output PSNR: ``10·log10(peak² / MSE)`` with ``peak = max |fp32 output|`` and the MSE over every element of
every output of every feed (:func:`.common.output_psnr`).
"""

from __future__ import annotations

import time
from pathlib import Path

from ldm_runtime.errors import UserError
from ldm_runtime.jsonio import json_number

from ..onnx_io import external_data_files, model_size_bytes, save
from .common import Feeds, Report, Session, _say, block_names, output_metrics, output_psnr, weighted_nodes
from .int8 import (DEFAULT_CALIBRATION, DEFAULT_LAYOUT, DEFAULT_PERCENTILE, Calibration, _check_layout, _typed_model,
                   calibrate, quantize_qdq)


def _subset(feeds: Feeds, n: int) -> list:
    if n <= 0 or n >= len(feeds):
        return list(feeds)
    step = len(feeds) / n
    return [feeds[int(i * step)] for i in range(n)]


def mixed(onnx_in: str | Path, onnx_out: str | Path, feeds: Feeds, *, target_psnr: float,
          max_fp32_fraction: float = 0.5, sensitivity_feeds: int = 8,
          calibrate_method: str = DEFAULT_CALIBRATION, percentile: float = DEFAULT_PERCENTILE,
          calibration: Calibration | None = None, layout: str = DEFAULT_LAYOUT, threads: int | None = None,
          report: Report = None) -> dict:
    """Write an int8/fp32 mixed-precision version of ``onnx_in`` meeting ``target_psnr`` (dB, over ``feeds``)
    to ``onnx_out``; returns the recipe. ``feeds`` calibrate (unless ``calibration`` is given) and measure;
    ``sensitivity_feeds`` of them (evenly spaced) measure the per-block sensitivity. ``layout``: the int8
    Q/DQ placement, as in :func:`.int8.int8` (``tensorrt`` or ``ort-cpu``)."""
    _check_layout(layout)
    t0 = time.perf_counter()
    feeds = list(feeds)  # any iterable of feed dicts (a calibration set's generator too)
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if not feeds:
        raise UserError("mixed precision needs at least one feed")
    typed = _typed_model(onnx_in)
    weighted = weighted_nodes(typed)
    if not weighted:
        raise UserError(f"{onnx_in.name} has no Conv, Gemm or MatMul-with-weight nodes to quantize")
    names = [w.name for w in weighted]
    of_block = block_names(names)
    blocks: dict[str, list] = {}
    for w in weighted:
        blocks.setdefault(of_block[w.name], []).append(w)
    total = sum(w.weight_params for w in weighted)
    params = {b: sum(w.weight_params for w in ws) for b, ws in blocks.items()}
    if calibration is None:
        calibration = calibrate(onnx_in, feeds, method=calibrate_method, percentile=percentile, threads=threads,
                                report=report, conv_outputs=layout == "ort-cpu")

    with Session(typed, threads) as s:
        ref = [s.run(f) for f in feeds]
    sub = _subset(list(range(len(feeds))), sensitivity_feeds)
    sub_feeds, sub_ref = [feeds[i] for i in sub], [ref[i] for i in sub]

    def psnr_of(int8_nodes: list[str], which: str) -> float:
        model = quantize_qdq(typed, calibration, int8_nodes, layout)
        fs, rs = (feeds, ref) if which == "all" else (sub_feeds, sub_ref)
        with Session(model, threads) as s:
            got = [s.run(f) for f in fs]
        return output_psnr(rs, got)

    _say(report, f"sensitivity of {len(blocks)} blocks on {len(sub_feeds)} feeds")
    sensitivity = {b: psnr_of([w.name for w in ws], "subset") for b, ws in blocks.items()}
    order = sorted(blocks, key=lambda b: (sensitivity[b], -params[b]))
    candidates, used = [], 0
    for b in order:
        if used + params[b] <= max_fp32_fraction * total:
            candidates.append(b)
            used += params[b]

    evaluations: dict[int, float] = {}

    def config(k: int) -> tuple[list[str], list[str]]:
        fp32 = set(candidates[:k])
        return [b for b in blocks if b in fp32], [w.name for w in weighted if of_block[w.name] not in fp32]

    def evaluate(k: int) -> float:
        if k not in evaluations:
            evaluations[k] = psnr_of(config(k)[1], "all")
            _say(report, f"{k} most sensitive blocks in fp32: {evaluations[k]:.2f} dB")
        return evaluations[k]

    def meets(k: int) -> bool:
        return evaluate(k) >= target_psnr

    if meets(0):
        k = 0
    elif not candidates or not meets(len(candidates)):
        best_k = max(evaluations, key=lambda j: evaluations[j])
        fp32_blocks = config(best_k)[0]
        frac = sum(params[b] for b in fp32_blocks) / total
        kept = ", ".join(fp32_blocks[:6]) + (f" and {len(fp32_blocks) - 6} more" if len(fp32_blocks) > 6 else "")
        raise UserError(
            f"int8 mixed precision cannot reach {target_psnr:g} dB output PSNR keeping at most "
            f"{max_fp32_fraction:.0%} of the quantizable weights in fp32: best {evaluations[best_k]:.2f} dB with "
            f"{len(fp32_blocks)} of {len(blocks)} blocks in fp32 ({frac:.1%} of the weights)"
            + (f": {kept}" if fp32_blocks else "") + "; lower the target or raise max_fp32_fraction")
    else:
        lo, hi = 0, len(candidates)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if meets(mid):
                hi = mid
            else:
                lo = mid
        k = hi

    fp32_blocks, int8_nodes = config(k)
    model = quantize_qdq(typed, calibration, int8_nodes, layout)
    files = save(model, onnx_out, external=bool(external_data_files(onnx_in)))
    with Session(onnx_out, threads) as s:
        got = [s.run(f) for f in feeds]
    metrics = output_metrics(ref, got)
    final = output_psnr(ref, got)
    fp32_set = set(fp32_blocks)
    return {
        "method": "int8-mixed",
        "layout": layout,
        "tool": "onnxruntime.quantization QDQQuantizer (static QDQ, as int8 mode='static') with one calibration",
        "definition": "output PSNR = 10*log10(peak^2 / MSE), peak = max |fp32 output|, MSE over every element of "
                      "every output of every feed",
        "target_psnr_db": target_psnr,
        "psnr_db": json_number(final, 4),
        "met": final >= target_psnr,
        "max_fp32_fraction": max_fp32_fraction,
        "fp32_weight_fraction": round(sum(params[b] for b in fp32_blocks) / total, 6),
        "calibration": calibration.describe(),
        "sensitivity_feeds": len(sub_feeds),
        "feeds": len(feeds),
        "fp32_blocks": fp32_blocks,
        "blocks": [{"block": b, "precision": "fp32" if b in fp32_set else "int8",
                    "sensitivity_psnr_db": json_number(sensitivity[b], 4), "sensitivity_rank": order.index(b) + 1,
                    "weight_params": params[b], "nodes": [w.name for w in blocks[b]]} for b in blocks],
        "search": [{"fp32_blocks": j, "psnr_db": json_number(p, 4)} for j, p in sorted(evaluations.items())],
        "files": files,
        "size_bytes": {"fp32": model_size_bytes(onnx_in), "mixed": model_size_bytes(onnx_out)},
        "vs_fp32": metrics,
        "seconds": round(time.perf_counter() - t0, 2),
    }
