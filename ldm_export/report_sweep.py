"""``ldm-export report --adherence N --executor …``: the adherence images as tasks, and the report as HTML.

One task per (prompt, seed): every bundle generates that image (bundles are opened once per worker, each file's
sha256 checked there, and the manifest compared with the driver's). Images come back in task order, so the
scores are those of the one-loop :func:`ldm_export.report.adherence_images`, whatever ran them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ldm_runtime.bundle import canonical_sha256
from ldm_runtime.errors import UserError
from ldm_runtime.metrics import psnr

from .sweep import ExecutorConfig, Task, TaskStore, run_tasks
from .sweep.store import state_folder


@dataclass(frozen=True)
class AdherenceJob:
    bundles: tuple[tuple[Path, str], ...]    # (path, the driver's manifest seal)
    steps: int
    guidance_scale: float
    sampler: str | None
    backend: str | None
    provider: str | None

    def setup(self):
        from ldm_runtime.bundle import open_bundle
        from ldm_runtime.pipeline import Components, Pipeline
        from ldm_runtime.runners import RunnerOptions, backend_for, options_for

        pipelines = []
        for path, seal in self.bundles:
            bundle = open_bundle(path)
            if canonical_sha256(bundle.manifest) != seal:
                raise UserError(f"the worker's copy of {path} is another bundle than the driver's")
            backend = backend_for(bundle.manifest, self.backend)
            options = options_for(backend, RunnerOptions(provider=self.provider))
            pipelines.append(Pipeline(bundle, Components(bundle, backend=backend, options=options)))
        return pipelines

    def run(self, pipelines, payload):
        from ldm_runtime.request import Request

        prompt, seed = payload
        req = Request(prompt=prompt, steps=self.steps, guidance_scale=self.guidance_scale, seed=seed,
                      sampler=self.sampler)
        return {"prompt": prompt, "seed": seed}, {f"bundle{b:03d}": p.generate(req).image
                                                 for b, p in enumerate(pipelines)}


def adherence_sweep(paths: list[Path], manifests: list[dict], prompts: list[str], cfg, executor: ExecutorConfig,
                    resume: bool, say=lambda msg: None) -> list[list[np.ndarray]]:
    """Every bundle's image of every prompt × seed (prompt-major, as the one-loop version), per bundle."""

    job = AdherenceJob(tuple((Path(p).absolute(), canonical_sha256(m)) for p, m in zip(paths, manifests)), cfg.steps,
                       cfg.guidance_scale, cfg.sampler, cfg.backend, cfg.provider)
    tasks = [Task(f"{i:06d}", (p, s), f"{p!r} seed {s}")
             for i, (p, s) in enumerate((p, s) for p in prompts for s in range(cfg.seeds))]
    identity = {"kind": "report-adherence", "bundles": [seal for _, seal in job.bundles], "prompts": prompts,
                "seeds": cfg.seeds, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "sampler": cfg.sampler,
                "backend": cfg.backend, "provider": cfg.provider}
    store = TaskStore(state_folder("report", identity),
                      identity, resume)
    run_tasks(executor, job, tasks, store, say, what="images")
    images: list[list[np.ndarray]] = [[] for _ in paths]
    for t in tasks:
        _, arrays = store.get(t.key)
        for b in range(len(paths)):
            images[b].append(arrays[f"bundle{b:03d}"])
    store.remove()
    return images


def render_report_html(rows, images: list[list[np.ndarray]] | None, base: int | None, reps: list[tuple[str, int]]) \
        -> str:
    """The report's table, per bundle the recipe and, with adherence images, each next to the baseline's and
    their amplified difference; the machine and versions."""
    from .html_report import CSS, _case_grid, _e, _table, machine

    head = ["bundle", "recipe", "backend", "size MiB", "golden image dB", "adherence overall",
            "image dB vs baseline (median / min)"]
    body = [[r.name, r.quality or r.precision, r.backend, f"{r.size_bytes / 2**20:.2f}",
             f"{r.golden_image_psnr_db:.2f}", f"{100 * r.adherence['overall']:.1f} %" if r.adherence else "-",
             " / ".join(f"{r.vs_baseline_psnr_db[k]:.2f}" for k in ("median", "min")) if r.vs_baseline_psnr_db
             else "-"] for r in rows]
    parts = ["<h1>Bundle report</h1>", _table(head, body),
             "<h2>Components (PSNR dB vs fp32 torch; latency ms here)</h2>",
             _table(["bundle", *sorted({c for r in rows for c in r.component_psnr_db}),
                     *(f"{c} ms" for c in sorted({c for r in rows for c in r.latency_ms}))],
                    [[r.name, *(f"{r.component_psnr_db[c]:.2f}" for c in sorted(r.component_psnr_db)),
                      *(f"{r.latency_ms[c]:.2f}" for c in sorted(r.latency_ms))] for r in rows])]
    if images is not None and base is not None:
        for b, r in enumerate(rows):
            if b == base:
                continue
            parts.append(f"<h2>{_e(r.name)} vs the baseline {_e(rows[base].name)}</h2>")
            parts += [_case_grid(images[base][k], images[b][k], rows[base].name, r.name,
                                 f"<b>{_e(p)}</b> seed {s}<br>PSNR {psnr(images[b][k], images[base][k], 255.0):.2f} dB")
                      for k, (p, s) in enumerate(reps)]
    parts += ["<h2>Machine and versions</h2>", _table(["", ""], [[k, v] for k, v in machine().items()])]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>ldm-export bundle report</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
