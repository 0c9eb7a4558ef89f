"""Sensitivity-driven mixed bit widths for k-means palettization (the Core ML counterpart of
:mod:`ldm_export.quantize.mixed`), measured with the Core ML reference evaluator.

1. The program is palettized twice, every weight at ``low_nbits`` and every weight at ``high_nbits``
   (coremltools' k-means, its default weight threshold); each palettized weight is decompressed once with the
   evaluator's own kernels. A candidate mixes the two per block: the evaluator runs the uncompressed program
   with the chosen decompressed weights put in place of its weights, which is what the mixed program computes.
2. The palettized weights are grouped into blocks from their names (:func:`block_of`).
3. Sensitivity: for each block, the output PSNR against the uncompressed program when *only* that block is at
   low bits, on an evenly spaced subset of the feeds. Lower PSNR = more sensitive.
4. Blocks are taken most-sensitive first into the wide list, skipping any that would push the wide share of
   the palettized weights above ``max_high_fraction``. Keeping the first *k* wide is configuration *k*; the
   smallest *k* whose output PSNR over all feeds meets the target is found by bisection (PSNR is assumed to
   grow with *k*).
5. coremltools palettizes the chosen configuration (per-op configs), and the saved package is measured: the
   record's PSNR is the file's, never the search's. If even all candidates wide miss the target,
   :class:`UserError` says the best PSNR reached and which blocks it kept wider.

Output PSNR: ``10 log10(peak^2 / MSE)``, ``peak = max |reference output|``, MSE over every element of every
output of every feed; the reference is the uncompressed program in the same evaluator and arithmetic.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ldm_runtime.errors import UserError
from ldm_runtime.jsonio import json_number
from ldm_runtime.runners.coreml_reference.evaluate import evaluate as evaluate_program
from ldm_runtime.runners.coreml_reference.ops import OPS
from ldm_runtime.runners.coreml_reference.program import Program, load_program

from ...quantize.common import output_psnr
from .compress import _cto, _needs_sklearn, palettize, palettizer_config
from .package import load, package_size, save

Feeds = list[dict[str, np.ndarray]]
WEIGHT_PARAMS = {"conv": "weight", "linear": "weight", "matmul": "y", "conv_transpose": "weight"}


def reference_outputs(program: Program, feeds: Feeds) -> list[dict[str, np.ndarray]]:
    """The default ``evaluate``: the reference evaluator in the program's own arithmetic."""
    return [evaluate_program(program, f) for f in feeds]


def block_of(weight: str) -> str:
    """The block of a weight from its (torch parameter) name: ``p_m_down_blocks_0_resnets_0_conv1_weight_to_fp16``
    -> ``down_blocks_0_resnets_0``: cut after the second index (``_N_``), or the first when there is one
    (``mid_block_resnets_0``); a name without an index is its own block (``conv_in``)."""
    name = re.sub(r"^p_m_", "", weight)
    name = re.sub(r"_weight(_.*)?$", "", name)
    parts = name.split("_")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    if not idx:
        return name
    return "_".join(parts[:(idx[1] if len(idx) > 1 else idx[0]) + 1])


def _decompressed(program: Program) -> dict[str, np.ndarray]:
    """Each weighted op's decompressed weight (by op name), for the ops whose weight is compressed."""
    env = dict(program.constants)
    for op in program.ops:
        if op.type.startswith("constexpr_"):
            args = {k: env[r] for k, r in op.inputs.items()}
            env[op.outputs[0]] = np.asarray(OPS[op.type](**args)).astype(op.dtypes[0])
    produced = {o for op in program.ops if op.type.startswith("constexpr_") for o in op.outputs}
    return {op.name: env[op.inputs[WEIGHT_PARAMS[op.type]]] for op in program.ops
            if op.type in WEIGHT_PARAMS and op.inputs.get(WEIGHT_PARAMS[op.type]) in produced}


@dataclasses.dataclass
class _Search:
    """Evaluates configurations: which blocks take the low-bit, which the high-bit weights."""

    base: Program
    sets: dict[str, tuple[Feeds, list]]   # "all" / "subset" -> (feeds, uncompressed outputs)
    low: dict[str, np.ndarray]            # op name -> decompressed low-bit weight
    high: dict[str, np.ndarray]
    blocks: dict[str, list[str]]          # block -> op names
    weights: dict[str, str]               # op name -> the name of its weight in ``base``
    evaluate: Callable

    def psnr(self, low_blocks, high_blocks, which: str = "all") -> float:
        constants = dict(self.base.constants)
        for block, ops in self.blocks.items():
            # low blocks take the low-bit weights; high blocks the high-bit ones (none: stay uncompressed)
            table = self.low if block in low_blocks else (self.high or None) if block in high_blocks else None
            for op in ops if table is not None else ():
                constants[self.weights[op]] = table[op]
        feeds, ref = self.sets[which]
        return output_psnr(ref, self.evaluate(dataclasses.replace(self.base, constants=constants), feeds))


def _subset(n_feeds: int, n: int) -> list[int]:
    if n <= 0 or n >= n_feeds:
        return list(range(n_feeds))
    return [int(i * n_feeds / n) for i in range(n)]


def _prepare(mlpackage: Path, feeds: Feeds, low_nbits: int, high_nbits: int | None, sensitivity_feeds: int,
             evaluate: Callable, work: Path) -> _Search:
    """Step 1 and 2: the uncompressed outputs, both palettized weight sets, the blocks."""
    name = Path(mlpackage).stem
    base = load_program(mlpackage, name)
    low = _decompressed(load_program(_palettized(mlpackage, work, low_nbits), name))
    high = {} if high_nbits is None else _decompressed(load_program(_palettized(mlpackage, work, high_nbits), name))
    if not low:
        raise UserError(f"{Path(mlpackage).name} has no weights above coremltools' palettization threshold "
                        f"(2048 elements); nothing to palettize")
    weights = {op.name: op.inputs[WEIGHT_PARAMS[op.type]] for op in base.ops if op.name in low}
    blocks: dict[str, list[str]] = {}
    for op_name, weight in weights.items():
        blocks.setdefault(block_of(weight), []).append(op_name)
    ref = evaluate(base, feeds)
    sub = _subset(len(feeds), sensitivity_feeds)
    sets = {"all": (feeds, ref), "subset": ([feeds[i] for i in sub], [ref[i] for i in sub])}
    return _Search(base, sets, low, high, blocks, weights, evaluate)


def _palettized(mlpackage: Path, work: Path, nbits: int) -> Path:
    out = work / f"{nbits}bit.mlpackage"
    palettize(mlpackage, out, nbits=nbits)
    return out


def _smallest_k(meets: Callable[[int], bool], n: int) -> int | None:
    """The smallest k in 0..n with meets(k), by bisection (meets is assumed monotone); None when not even n."""
    if meets(0):
        return 0
    if n == 0 or not meets(n):
        return None
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return hi


def _kept(blocks: list[str]) -> str:
    return ", ".join(blocks[:6]) + (f" and {len(blocks) - 6} more" if len(blocks) > 6 else "")


def palettize_mixed(mlpackage: Path, out: Path, feeds: Feeds, *, target_psnr_db: float, low_nbits: int = 4,
                    high_nbits: int | None = 6, max_high_fraction: float = 0.5, sensitivity_feeds: int = 4,
                    evaluate: Callable[[Program, Feeds], list] = reference_outputs) -> dict:
    """Palettize ``mlpackage`` into ``out`` at ``low_nbits``, keeping the most sensitive blocks at
    ``high_nbits`` (None: uncompressed), so that the output PSNR over ``feeds`` meets ``target_psnr_db``."""
    _needs_sklearn()
    t0, feeds = time.perf_counter(), list(feeds)
    if not feeds:
        raise UserError("mixed palettization needs at least one feed")
    with tempfile.TemporaryDirectory() as work:
        search = _prepare(Path(mlpackage), feeds, low_nbits, high_nbits, sensitivity_feeds, evaluate, Path(work))
    params = {b: sum(search.low[op].size for op in ops) for b, ops in search.blocks.items()}
    total = sum(params.values())
    sensitivity = {b: search.psnr({b}, set(), "subset") for b in search.blocks}
    order = sorted(search.blocks, key=lambda b: (sensitivity[b], -params[b]))
    candidates, used = [], 0
    for b in order:
        if used + params[b] <= max_high_fraction * total:
            candidates.append(b)
            used += params[b]
    evaluations: dict[int, float] = {}

    def meets(k: int) -> bool:
        if k not in evaluations:
            evaluations[k] = search.psnr(set(search.blocks) - set(candidates[:k]), set(candidates[:k]))
        return evaluations[k] >= target_psnr_db

    k = _smallest_k(meets, len(candidates))
    if k is None:
        best = max(evaluations, key=lambda j: evaluations[j])
        wide = candidates[:best]
        raise UserError(
            f"mixed palettization cannot reach {target_psnr_db:g} dB output PSNR keeping at most "
            f"{max_high_fraction:.0%} of the palettized weights at {_bits(high_nbits)}: best "
            f"{evaluations[best]:.2f} dB with {len(wide)} of {len(search.blocks)} blocks kept wider"
            + (f" ({_kept(wide)})" if wide else "") + "; lower the target, raise max_high_fraction or keep "
            "the sensitive blocks uncompressed (high_nbits=None)")
    wide = candidates[:k]
    final = _write(Path(mlpackage), Path(out), search, wide, low_nbits, high_nbits)
    return {
        "method": "palettize-mixed", "low_nbits": low_nbits, "high_nbits": high_nbits,
        "definition": "output PSNR = 10*log10(peak^2 / MSE) against the uncompressed program in the reference "
                      "evaluator, peak = max |reference|, MSE over every element of every output of every feed",
        "target_psnr_db": target_psnr_db, "psnr_db": json_number(final, 4), "met": final >= target_psnr_db,
        "high_blocks": wide, "high_weight_fraction": round(sum(params[b] for b in wide) / total, 6),
        "blocks": [{"block": b, "nbits": high_nbits if b in wide else low_nbits, "weight_params": params[b],
                    "sensitivity_psnr_db": json_number(sensitivity[b], 4), "sensitivity_rank": order.index(b) + 1}
                   for b in search.blocks],
        "search": [{"high_blocks": j, "psnr_db": json_number(p, 4)} for j, p in sorted(evaluations.items())],
        "feeds": len(feeds), "sensitivity_feeds": len(search.sets["subset"][0]), "file": Path(out).name,
        "size_bytes": {"source": package_size(mlpackage), "compressed": package_size(out)},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _bits(nbits: int | None) -> str:
    return "fp16 (uncompressed)" if nbits is None else f"{nbits} bits"


def _write(mlpackage: Path, out: Path, search: _Search, wide: list[str], low_nbits: int,
           high_nbits: int | None) -> float:
    """Step 5: palettize the chosen configuration with coremltools, save it, and measure the saved file."""
    cto = _cto()
    high = None if high_nbits is None else palettizer_config(high_nbits)
    config = cto.OptimizationConfig(global_config=palettizer_config(low_nbits),
                                    op_name_configs={op: high for b in wide for op in search.blocks[b]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save(cto.palettize_weights(load(mlpackage), config), out)
    feeds, ref = search.sets["all"]
    return output_psnr(ref, search.evaluate(load_program(out, out.stem), feeds))
