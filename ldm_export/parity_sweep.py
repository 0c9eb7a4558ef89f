"""``ldm-export parity B… --prompts FILE --seeds N``: every bundle over every prompt × seed, aggregated.

One task per request (prompt × seed): the torch reference runs once and every bundle is compared with it, so a
sweep of 3 bundles costs one reference per request, not three. Tasks run on an executor
(:mod:`ldm_export.sweep`: this process or Ray workers, each loading the model and the bundles once and checking
them by hash); the per-bundle :class:`~ldm_export.parity.ParityReport` is assembled in request order, so it is
the one :func:`ldm_export.parity.run_parity` gives, whatever ran it. Each bundle's summary: worst and median
image PSNR and max difference, per-step drift percentiles, the first divergent step, the failures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ldm_runtime.bundle import canonical_sha256
from ldm_runtime.errors import UserError

from .lora import LoraSpec, recorded
from .parity import (
    ParityReport,
    ParitySweep,
    case_label,
    compare_case,
    component_rows,
    load_reference,
    open_side,
    sweep_requests,
)
from .sweep import ExecutorConfig, Task, TaskStore, run_tasks
from .sweep.store import state_folder

DRIFT_PERCENTILES = (50, 90, 100)


@dataclass
class BundleResult:
    bundle: Path
    precision: str
    report: ParityReport
    images: list[np.ndarray] = field(default_factory=list)   # the bundle's image of every case, in order

    @property
    def summary(self) -> dict:
        return summarize(self.report)


@dataclass
class SweepResult:
    bundles: list[BundleResult]
    reference_images: list[np.ndarray]
    requests: list[dict]          # label, seed per case (the cases' order)
    identity: dict                # what ran: model hash, bundles' seals, the sweep's arguments

    @property
    def ok(self) -> bool:
        return all(b.report.ok for b in self.bundles)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "bundles": [{"bundle": str(b.bundle), "precision": b.precision,
                                            "summary": b.summary, **b.report.to_dict()} for b in self.bundles]}


@dataclass(frozen=True)
class ParityJob:
    sweep: ParitySweep                       # its bundle field unused: the bundles are ``bundles``
    bundles: tuple[tuple[Path, str], ...]    # (path, the manifest's integrity seal on the driver)
    model_sha256: str

    def setup(self):
        model = load_reference(self.sweep)
        if model.source.sha256 != self.model_sha256:
            raise UserError(f"the worker's copy of {self.sweep.reference} is another model (sha256 "
                            f"{model.source.sha256[:12]}… vs {self.model_sha256[:12]}… on the driver)")
        sides = []
        for path, seal in self.bundles:
            side = open_side(path, model, self.sweep)   # every file's sha256 checked against its manifest
            if canonical_sha256(side.manifest) != seal:
                raise UserError(f"the worker's copy of {path} is another bundle than the driver's; give every worker "
                                "the same files")
            sides.append(side)
        return model, sides

    def run(self, state, payload):
        from .reference import reference_generate

        model, sides = state
        index, req = payload
        ref = reference_generate(model, req)
        cases, arrays = [], {"reference": ref.image}
        for b, side in enumerate(sides):
            case, image = compare_case(side, model, req, ref)
            cases.append(case)
            arrays[f"bundle{b:03d}"] = image
        entry = {"cases": cases,
                 "components": [component_rows(s, model, req, ref) for s in sides] if index == 0 else None}
        return entry, arrays


def run_sweep(sweep: ParitySweep, bundles: tuple[Path, ...], executor: ExecutorConfig = ExecutorConfig(),
              resume: bool = False, store_dir: Path | None = None,
              say: Callable[[str], None] = lambda msg: None) -> SweepResult:
    """Compare every bundle of ``bundles`` with ``sweep.reference`` over the sweep's requests."""
    executor.check()
    model = load_reference(sweep)
    sides = [open_side(b, model, sweep) for b in bundles]   # another model's bundle: refused before any work
    requests = sweep_requests(model, sides[0], sweep)
    for s in sides:   # a size or step count some bundle cannot serve: one line before any work
        try:
            s.pipeline.check(requests[0])
        except UserError as e:
            raise UserError(f"{s.path}: {e}; every bundle of a sweep must serve its requests (pass --width/--height "
                            "that all serve)") from e
        s.pipeline.components.release_all()
    absolute = replace(sweep, reference=Path(sweep.reference).absolute(),
                       config=None if sweep.config is None else Path(sweep.config).absolute(),
                       tokenizer=None if sweep.tokenizer is None else Path(sweep.tokenizer).absolute(),
                       loras=tuple((Path(f).absolute(), s) for f, s in sweep.loras))
    job = ParityJob(absolute, tuple((Path(b).absolute(), canonical_sha256(s.manifest))
                                    for b, s in zip(bundles, sides)), model.source.sha256)
    identity = {"kind": "parity", "model": model.source.sha256, "bundles": [seal for _, seal in job.bundles],
                "requests": [[case_label(model, r), r.seed] for r in requests],
                "base": {k: getattr(sweep.base, k) for k in ("steps", "guidance_scale", "eta", "sampler")},
                "backend": sweep.backend, "provider": sweep.provider,
                "loras": [[e["sha256"], e["scale"]] for e in recorded([LoraSpec(f, s) for f, s in sweep.loras])]}
    tasks = [Task(f"{i:06d}", (i, r), f"{case_label(model, r)!r} seed {r.seed}") for i, r in enumerate(requests)]
    folder = store_dir or state_folder("parity", identity)
    store = TaskStore(folder, identity, resume)
    run_tasks(executor, job, tasks, store, say, what="requests")
    result = _assemble(store, tasks, sides, identity)
    store.remove()
    return result


def _assemble(store: TaskStore, tasks: list[Task], sides: list, identity: dict) -> SweepResult:
    results = [BundleResult(s.path, s.precision, ParityReport()) for s in sides]
    refs, requests = [], []
    for t in tasks:
        entry, arrays = store.get(t.key)
        refs.append(arrays["reference"])
        requests.append({"label": entry["cases"][0]["prompt"], "seed": entry["cases"][0]["seed"]})
        for b, res in enumerate(results):
            res.report.cases.append(entry["cases"][b])
            res.images.append(arrays[f"bundle{b:03d}"])
            if entry["components"] is not None:
                res.report.components = entry["components"][b]
    return SweepResult(results, refs, requests, identity)


def summarize(report: ParityReport) -> dict:
    """Worst and median image PSNR / max difference, per-step drift percentiles (rel. L2 over the cases at
    each step), the first divergent step of any case, and the failures."""
    cases = report.cases
    psnrs = np.array([c["image_psnr_db"] for c in cases], float)
    diffs = np.array([c["image_max_abs"] for c in cases], float)
    steps = min((len(c["step_rel_l2"]) for c in cases), default=0)
    drift = np.array([c["step_rel_l2"][:steps] for c in cases], float).reshape(len(cases), steps)
    firsts = [c["first_divergent_step"] for c in cases if c["first_divergent_step"] is not None]
    return {
        "cases": len(cases), "failed_cases": sum(not c["ok"] for c in cases),
        "failed_components": [r["component"] for r in report.components if not r["ok"]],
        "image_psnr_db": {"worst": float(psnrs.min()), "median": float(np.median(psnrs))},
        "image_max_abs": {"worst": float(diffs.max()), "median": float(np.median(diffs))},
        "step_rel_l2_percentiles": {str(q): np.percentile(drift, q, axis=0).tolist() if steps else []
                                    for q in DRIFT_PERCENTILES},
        "first_divergent_step": min(firsts) if firsts else None, "ok": report.ok,
    }


def format_sweep(result: SweepResult) -> str:
    head = ("bundle", "precision", "cases", "PSNR worst", "PSNR median", "max diff worst", "median",
            "drift p50/p90/max (last step)", "first bad step", "failed", "result")
    rows = [head]
    for b in result.bundles:
        s = b.summary
        last = [s["step_rel_l2_percentiles"][str(q)][-1] if s["step_rel_l2_percentiles"][str(q)] else float("nan")
                for q in DRIFT_PERCENTILES]
        failed = s["failed_cases"] + len(s["failed_components"])
        rows.append((b.bundle.name, b.precision, str(s["cases"]), f"{s['image_psnr_db']['worst']:.2f}",
                     f"{s['image_psnr_db']['median']:.2f}", f"{s['image_max_abs']['worst']:.0f}",
                     f"{s['image_max_abs']['median']:.0f}", "/".join(f"{v:.3g}" for v in last),
                     str(s["first_divergent_step"] or "-"), str(failed), "ok" if s["ok"] else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    for b in result.bundles:
        lines += [f"{b.bundle.name}: {c['prompt'][:50]!r} seed {c['seed']}: image {c['image_psnr_db']:.2f} dB, max "
                  f"diff {c['image_max_abs']:.0f}, first bad step {c['first_divergent_step'] or '-'}: FAIL"
                  for c in b.report.cases if not c["ok"]]
        lines += [f"{b.bundle.name}: component {r['component']}: PSNR {r['psnr_db']:.2f} dB, rel_l2 {r['rel_l2']:.3g}: "
                  "FAIL" for r in b.report.components if not r["ok"]]
    lines.append("PASS" if result.ok else "FAIL")
    return "\n".join(lines)


def junit_suites(result: SweepResult) -> list:
    """A JUnit suite per bundle: a test case per component check and per request, failures with the figures."""
    from ldm_runtime.junit import Case, Suite

    suites = []
    for b in result.bundles:
        cls = f"ldm-export parity.{b.bundle.name}"
        cases = []
        for r in b.report.components:
            fig = f"max_abs={r['max_abs']:.6g} rel_l2={r['rel_l2']:.6g} cosine={r['cosine']:.8f} psnr_db={r['psnr_db']:.2f}"
            cases.append(Case(f"component {r['component']}", cls, None if r["ok"] else f"{r['component']}: {fig}",
                              fig))
        for c in b.report.cases:
            fig = (f"image_psnr_db={c['image_psnr_db']:.2f} image_max_abs={c['image_max_abs']:.0f} "
                   f"worst_step_rel_l2={max(c['step_rel_l2'], default=float('nan')):.6g} "
                   f"first_divergent_step={c['first_divergent_step'] or '-'}")
            name = f"{c['prompt']!r} seed {c['seed']}"
            cases.append(Case(name, cls, None if c["ok"] else f"{name}: {fig}", fig))
        suites.append(Suite(f"ldm-export parity {b.bundle.name}", cases,
                            {"bundle": str(b.bundle), "precision": b.precision, "model": result.identity["model"]}))
    return suites
