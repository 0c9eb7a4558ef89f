"""``ldm-export report``: one table comparing bundles of the same model built with different recipes.

Per bundle: precision, size on disk, each component's latency on this machine (ONNX
Runtime, the bundle's golden inputs, median of ``runs`` after a warm-up), each
component's PSNR against fp32 torch on those inputs and the golden image's PSNR
against the fp32 torch image (both from the golden file: a quantized bundle keeps
torch's outputs beside its own). With ``adherence_prompts`` (the demo model's caption
grammar) every bundle also generates prompts × seeds, scored by the analytic
prompt-adherence checker, and each image is compared with the baseline bundle's image
of the same prompt and seed.

Needs no torch: everything torch-side was recorded into the bundles at build time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldm_runtime.bundle import open_bundle
from ldm_runtime.errors import UserError
from ldm_runtime.metrics import psnr, tensor_psnr
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.request import Request
from ldm_runtime.runners import RunnerOptions, backend_for, options_for
from ldm_runtime.tolerances import quality_key, quality_target
from ldm_runtime.verify import golden_tensors, load_golden

from .demo import GUIDANCE as DEMO_GUIDANCE
from .sweep import ExecutorConfig


@dataclass(frozen=True)
class ReportConfig:
    bundles: tuple[Path, ...]
    baseline: Path | None = None      # default: the first fp32 bundle among ``bundles``
    runs: int = 5
    adherence_prompts: int = 0        # 0: no adherence/image comparison
    seeds: int = 2
    steps: int = 50
    guidance_scale: float = DEMO_GUIDANCE
    provider: str | None = None       # ONNX Runtime execution provider (None: the best installed)
    backend: str | None = None        # for the bundles it can run (others: their own), e.g. coreml-reference
    sampler: str | None = None        # of the adherence images (None: each bundle's default)
    executor: ExecutorConfig = ExecutorConfig()   # where the adherence images are generated (one task per image)
    resume: bool = False              # continue an interrupted run's adherence images


@dataclass
class BundleRow:
    name: str
    precision: str
    size_bytes: int
    quality: str = ""      # the quality target that judges it (its compression's, else its precision's)
    backend: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)
    component_psnr_db: dict[str, float] = field(default_factory=dict)
    golden_image_psnr_db: float = float("nan")
    adherence: dict[str, float] | None = None
    vs_baseline_psnr_db: dict[str, float] | None = None   # mean / min over the adherence images


def bundle_size(bundle) -> int:
    return sum(bundle.path(rel).stat().st_size for rel in bundle.manifest["files"])


def _torch_ref(golden: dict[str, np.ndarray], component: str, output: str) -> np.ndarray:
    return golden.get(f"{component}/ref/{output}", golden.get(f"{component}/out/{output}"))


def measure_bundle(path: Path, cfg: ReportConfig) -> tuple[BundleRow, Pipeline]:
    bundle = open_bundle(path)
    m = bundle.manifest
    backend = backend_for(m, cfg.backend)
    options = options_for(backend, RunnerOptions(provider=cfg.provider))
    pipeline = Pipeline(bundle, Components(bundle, backend=backend, options=options))
    golden = load_golden(bundle)
    row = BundleRow(name=str(path), precision=m["precision"], size_bytes=bundle_size(bundle), quality=quality_key(m),
                    backend=backend)
    for name, comp in m["components"].items():
        feeds = golden_tensors(golden, name, "in")
        if not feeds:
            continue
        with pipeline.components.use(name) as runner:
            got = pipeline.run_batch(runner, feeds, where="golden inputs")  # warm-up
            times = []
            for _ in range(cfg.runs):
                t = time.perf_counter()
                runner.run(feeds)
                times.append(time.perf_counter() - t)
        row.latency_ms[name] = 1000 * statistics.median(times)
        for out in comp["outputs"]:
            label = name if len(comp["outputs"]) == 1 else f"{name}.{out}"
            row.component_psnr_db[label] = tensor_psnr(got[out], _torch_ref(golden, name, out))
    ref_image = golden.get("reference/image", golden["trajectory/image"])
    result = pipeline.generate(Request.from_manifest(m["golden"], golden))
    row.golden_image_psnr_db = psnr(result.image, ref_image, 255.0)
    return row, pipeline


def adherence_images(pipeline: Pipeline, prompts: list[str], seeds: int, steps: int, guidance: float,
                     progress=None, sampler: str | None = None) -> list[np.ndarray]:
    images = []
    for p in prompts:
        for s in range(seeds):
            req = Request(prompt=p, steps=steps, guidance_scale=guidance, seed=s, sampler=sampler)
            images.append(pipeline.generate(req).image)
            if progress is not None:
                progress.update(1)
    return images


def run_report(cfg: ReportConfig, progress_factory=None, say=lambda msg: None,
               keep: dict | None = None) -> list[BundleRow]:
    """The rows of every bundle; ``keep``, when given, receives the adherence images (``images`` per bundle,
    ``base``, ``reps``: prompt and seed of each) for the HTML report."""
    if not cfg.bundles:
        raise UserError("give at least one bundle")
    paths = [Path(p) for p in cfg.bundles]
    base = None  # index of the fp32 bundle the adherence images are compared with
    if cfg.adherence_prompts and cfg.baseline is not None:
        if Path(cfg.baseline) not in paths:
            paths.insert(0, Path(cfg.baseline))  # measured and checked like the others
        base = paths.index(Path(cfg.baseline))
    measured = [measure_bundle(p, cfg) for p in paths]
    rows, pipelines = [r for r, _ in measured], [p for _, p in measured]
    sources = {p.bundle.manifest["source"]["sha256"] for p in pipelines}
    if len(sources) > 1:
        raise UserError("the bundles come from different models (source sha256 differ); compare recipes of one model")
    if cfg.adherence_prompts:
        from .demo import adherence, shapes

        if base is None:
            base = next((i for i, r in enumerate(rows) if r.precision == "fp32"), None)
        if base is None:
            raise UserError("adherence images are compared with an fp32 bundle: include one or pass --baseline")
        from .report_sweep import adherence_sweep

        prompts = shapes.eval_prompts(cfg.adherence_prompts)
        reps = [p for p in prompts for _ in range(cfg.seeds)]
        for p in pipelines:
            p.components.release_all()
        images = adherence_sweep(paths, [p.bundle.manifest for p in pipelines], prompts, cfg, cfg.executor,
                                 cfg.resume, say)
        for row, own in zip(rows, images):
            row.adherence = adherence.score(reps, own)
        if keep is not None:
            keep.update(images=images, base=base, reps=[(p, s) for p in prompts for s in range(cfg.seeds)])
        for row, own in zip(rows, images):
            values = np.array([psnr(a, b, 255.0) for a, b in zip(own, images[base])])
            finite = values[np.isfinite(values)]
            floor = quality_target(row.quality).image_psnr_db
            row.vs_baseline_psnr_db = {
                "mean": float(finite.mean()) if finite.size else float("inf"),  # over the images that differ
                "median": float(np.median(values)), "min": float(values.min()),
                "identical": int(values.size - finite.size), "target": floor,
                "below_target": int((values < floor).sum()), "n": int(values.size)}
    for p in pipelines:
        p.components.release_all()
    return rows


def _db(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.1f}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *body]]


_ORDER = ["text_encoder", "class_embedder", "unet", "vae_decoder", "vae_encoder"]


def format_report(rows: list[BundleRow]) -> str:
    """Markdown tables: size, latency and PSNR vs fp32 torch; adherence when measured."""
    comps = sorted({c for r in rows for c in r.latency_ms}, key=_ORDER.index)
    outs = sorted({c for r in rows for c in r.component_psnr_db}, key=lambda c: _ORDER.index(c.split(".")[0]))
    lines = _table(
        ["bundle", "recipe", "backend", "size MiB", *(f"{c} ms" for c in comps), *(f"{c} dB" for c in outs),
         "golden image dB"],
        [[r.name, r.quality or r.precision, r.backend, f"{r.size_bytes / 2**20:.2f}",
          *(f"{r.latency_ms.get(c, float('nan')):.2f}" for c in comps),
          *(_db(r.component_psnr_db.get(c, float("nan"))) for c in outs), _db(r.golden_image_psnr_db)]
         for r in rows])
    if any(r.adherence for r in rows):
        lines += [""] + _table(
            ["bundle", "n", "colour", "shape", "colour+shape", "position", "overall",
             "image dB vs baseline (mean / median / min)", "images below the recipe's floor"],
            [[r.name, str(r.adherence["n"]),
              *(f"{100 * r.adherence[k]:.1f} %" for k in ("colour", "shape", "colour_shape", "position", "overall")),
              " / ".join(_db(r.vs_baseline_psnr_db[k]) for k in ("mean", "median", "min")),
              f"{r.vs_baseline_psnr_db['below_target']} of {r.vs_baseline_psnr_db['n']} "
              f"(< {r.vs_baseline_psnr_db['target']:g} dB)"]
             for r in rows if r.adherence])
    return "\n".join(lines)
