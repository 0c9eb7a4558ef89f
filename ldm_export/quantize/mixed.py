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
from .calibrate import DEFAULT_CALIBRATION, DEFAULT_PERCENTILE, Calibration, _typed_model, calibrate
from .qdq import DEFAULT_LAYOUT, _check_layout, quantize_qdq


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
    search = _Search(onnx_in, feeds, layout, threads, report)
    if calibration is None:
        calibration = calibrate(onnx_in, feeds, method=calibrate_method, percentile=percentile, threads=threads,
                                report=report, conv_outputs=layout == "ort-cpu")
    search.start(calibration, sensitivity_feeds, max_fp32_fraction)
    k = search.smallest_meeting(target_psnr, max_fp32_fraction)
    fp32_blocks, int8_nodes = search.config(k)
    files = save(quantize_qdq(search.typed, calibration, int8_nodes, layout), onnx_out,
                 external=bool(external_data_files(onnx_in)))
    with Session(onnx_out, threads) as s:
        got = [s.run(f) for f in feeds]
    final = output_psnr(search.ref, got)
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
        "fp32_weight_fraction": round(search.fraction(fp32_blocks), 6),
        "calibration": calibration.describe(),
        "sensitivity_feeds": len(search.sub_feeds),
        "feeds": len(feeds),
        "fp32_blocks": fp32_blocks,
        "blocks": search.block_records(set(fp32_blocks)),
        "search": [{"fp32_blocks": j, "psnr_db": json_number(v, 4)} for j, v in sorted(search.evaluations.items())],
        "files": files,
        "size_bytes": {"fp32": model_size_bytes(onnx_in), "mixed": model_size_bytes(onnx_out)},
        "vs_fp32": output_metrics(search.ref, got),
        "seconds": round(time.perf_counter() - t0, 2),
    }


class _Search:
    """Steps 1-4 of the module docstring over one model and its feeds."""

    def __init__(self, onnx_in: Path, feeds: list, layout: str, threads: int | None, report: Report):
        # 1. weighted nodes grouped into blocks
        self.typed = _typed_model(onnx_in)
        self.weighted = weighted_nodes(self.typed)
        if not self.weighted:
            raise UserError(f"{onnx_in.name} has no Conv, Gemm or MatMul-with-weight nodes to quantize")
        self.of_block = block_names([w.name for w in self.weighted])
        self.blocks: dict[str, list] = {}
        for w in self.weighted:
            self.blocks.setdefault(self.of_block[w.name], []).append(w)
        self.total = sum(w.weight_params for w in self.weighted)
        self.params = {b: sum(w.weight_params for w in ws) for b, ws in self.blocks.items()}
        self.feeds, self.layout, self.threads, self.report = feeds, layout, threads, report
        self.evaluations: dict[int, float] = {}

    def start(self, calibration: Calibration, sensitivity_feeds: int, max_fp32_fraction: float) -> None:
        """2. per-block sensitivity on a subset of the feeds; 3. the fp32 candidates, most sensitive first."""
        self.calibration = calibration
        with Session(self.typed, self.threads) as s:
            self.ref = [s.run(f) for f in self.feeds]
        sub = _subset(list(range(len(self.feeds))), sensitivity_feeds)
        self.sub_feeds, self.sub_ref = [self.feeds[i] for i in sub], [self.ref[i] for i in sub]
        _say(self.report, f"sensitivity of {len(self.blocks)} blocks on {len(self.sub_feeds)} feeds")
        self.sensitivity = {b: self.psnr_of([w.name for w in ws], "subset") for b, ws in self.blocks.items()}
        self.order = sorted(self.blocks, key=lambda b: (self.sensitivity[b], -self.params[b]))
        self.candidates, used = [], 0
        for b in self.order:
            if used + self.params[b] <= max_fp32_fraction * self.total:
                self.candidates.append(b)
                used += self.params[b]

    def psnr_of(self, int8_nodes: list[str], which: str) -> float:
        model = quantize_qdq(self.typed, self.calibration, int8_nodes, self.layout)
        fs, rs = (self.feeds, self.ref) if which == "all" else (self.sub_feeds, self.sub_ref)
        with Session(model, self.threads) as s:
            got = [s.run(f) for f in fs]
        return output_psnr(rs, got)

    def config(self, k: int) -> tuple[list[str], list[str]]:
        """Configuration k: the first k candidates in fp32 (blocks), every other weighted node int8 (nodes)."""
        fp32 = set(self.candidates[:k])
        return ([b for b in self.blocks if b in fp32],
                [w.name for w in self.weighted if self.of_block[w.name] not in fp32])

    def evaluate(self, k: int) -> float:
        if k not in self.evaluations:
            self.evaluations[k] = self.psnr_of(self.config(k)[1], "all")
            _say(self.report, f"{k} most sensitive blocks in fp32: {self.evaluations[k]:.2f} dB")
        return self.evaluations[k]

    def fraction(self, fp32_blocks: list[str]) -> float:
        return sum(self.params[b] for b in fp32_blocks) / self.total

    def smallest_meeting(self, target_psnr: float, max_fp32_fraction: float) -> int:
        """3-4. the smallest k meeting the target, by bisection; a UserError naming the best when none does."""
        if self.evaluate(0) >= target_psnr:
            return 0
        if not self.candidates or self.evaluate(len(self.candidates)) < target_psnr:
            best_k = max(self.evaluations, key=lambda j: self.evaluations[j])
            fp32_blocks = self.config(best_k)[0]
            kept = ", ".join(fp32_blocks[:6]) + (f" and {len(fp32_blocks) - 6} more" if len(fp32_blocks) > 6 else "")
            raise UserError(
                f"int8 mixed precision cannot reach {target_psnr:g} dB output PSNR keeping at most "
                f"{max_fp32_fraction:.0%} of the quantizable weights in fp32: best {self.evaluations[best_k]:.2f} dB "
                f"with {len(fp32_blocks)} of {len(self.blocks)} blocks in fp32 ({self.fraction(fp32_blocks):.1%} of "
                f"the weights)" + (f": {kept}" if fp32_blocks else "") + "; lower the target or raise max_fp32_fraction")
        lo, hi = 0, len(self.candidates)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.evaluate(mid) >= target_psnr:
                hi = mid
            else:
                lo = mid
        return hi

    def block_records(self, fp32_set: set[str]) -> list[dict]:
        return [{"block": b, "precision": "fp32" if b in fp32_set else "int8",
                 "sensitivity_psnr_db": json_number(self.sensitivity[b], 4), "sensitivity_rank": self.order.index(b) + 1,
                 "weight_params": self.params[b], "nodes": [w.name for w in self.blocks[b]]} for b in self.blocks]
