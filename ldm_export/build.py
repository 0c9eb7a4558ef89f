"""``ldm-export build``: load → export ONNX → check against torch → quantize → compile → golden vectors → bundle.

:func:`build` reads as the pipeline of stages it is. The precision (:mod:`ldm_export.precision`: which
recipe each component gets) and the target (:mod:`ldm_export.targets`: what the bundle ships for which
runtime) are plug-ins: nothing here branches on their names.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ldm_runtime.errors import BelowTolerance, UserError
from ldm_runtime.jsonio import dumps
from ldm_runtime.request import Request
from ldm_runtime.schema import COMPONENTS

from .bundle import check_replaceable, finalize_manifest, is_bundle, staging_folder
from .export import OPSET, ComponentGraph, check_against_torch, component_graphs, export_onnx
from .golden import GOLDEN, family_request, golden_arrays, write_golden
from .loading import load_model
from .lora import LoraSpec, check_same_adapters, fuse_adapters
from .model import LoadedModel
from .precision import PRECISIONS, component_recipe, quantize_component
from .provenance import producer
from .resolution import check_resolutions, resolution_entry
from .targets import CompileJob, Target, get_target
from .tokenizer_export import export_tokenizer

# the calibration set a quantized build collects when none is given (ldm-export calibrate makes bigger ones)
AUTO_CALIBRATION = {"samples": 16, "steps": 20, "per_trajectory": 4, "seed": 0}
EXPORT_DIR = ".export"        # staging sub-folder of the fp32 exports (a quantized build reads them)
CALIBRATION_DIR = ".calibration"


@dataclass(frozen=True)
class BuildConfig:
    model: Path
    out: Path
    config: Path | None = None      # original YAML, for single-file checkpoints
    tokenizer: Path | None = None   # tokenizer folder, for single-file checkpoints
    factories: tuple[tuple[str, str], ...] = ()  # (component, "pkg.module:function"), custom models
    target: str = "onnx"
    precision: str | None = None    # None: the target's default (fp32 for ONNX and TensorRT, fp16 for Core ML)
    resolutions: tuple[tuple[int, int], ...] = ()   # empty: the model's native resolution
    golden: Request = field(default_factory=lambda: GOLDEN)  # the golden trajectory's request (size: the smallest)
    overwrite: bool = False
    calibration: Path | None = None  # calibration set folder (fp16/int8/mixed); None: collect a small one
    target_psnr: float | None = None  # mixed precision: UNet output PSNR target in dB
    int8_layout: str = "tensorrt"     # int8/mixed: Q/DQ placement, "tensorrt" or "ort-cpu"
    guidance: float | None = None     # the bundle's default guidance scale; None: calibration.default_guidance
    allow_below_target: bool = False  # quantized: write the bundle even below the recipe's quality target
    target_options: tuple[tuple[str, object], ...] = ()  # the target's own options (targets.get_target)
    loras: tuple[tuple[Path, float], ...] = ()  # LoRA files fused into the UNet / text encoder, with their scales


@dataclass(frozen=True)
class _Job:
    """What every stage of one build needs."""

    cfg: BuildConfig
    model: LoadedModel
    sizes: tuple[tuple[int, int], ...]
    graphs: tuple[ComponentGraph, ...]
    target: Target
    staging: Path
    report: Callable[[str], None]

    @property
    def quantized(self) -> bool:
        """Whether the bundle's golden vectors are its own (it does not compute torch's fp32 numbers)."""
        return self.target.own_golden(self.cfg.precision)


def build(cfg: BuildConfig, report: Callable[[str], None] = lambda msg: None) -> dict:
    """Build a bundle at ``cfg.out``; returns its manifest. ``report`` receives one line per stage."""
    target = get_target(cfg.target, dict(cfg.target_options))
    cfg = replace(cfg, precision=cfg.precision or target.DEFAULT_PRECISION)
    _check_options(cfg, target)
    check_replaceable(cfg.out, cfg.overwrite, kind="bundle", is_kind=is_bundle, protected=_inputs(cfg))
    t0 = time.perf_counter()
    report(f"loading {cfg.model}")
    model = load_model(cfg.model, cfg.config, cfg.tokenizer, dict(cfg.factories))
    adapters = _fuse_adapters(cfg, model, report)
    sizes = tuple(check_resolutions(model, cfg.resolutions))
    with staging_folder(cfg.out) as staging:
        job = _Job(cfg, model, sizes, tuple(component_graphs(model)), target, staging, report)
        calib = _calibration_set(job)
        calib_summary = calib.summary() if calib is not None else None  # before a collected set is dropped
        tokenizer = _export_tokenizer(job)
        components, checks, recipes = _export_components(job, calib)
        body = _manifest_body(job, tokenizer, components)
        if adapters:
            body["adapters"] = adapters
        arrays, golden = _golden_vectors(job)
        if job.quantized:
            body["quantization"] = _quantized_golden(job, {**body, "golden": golden}, arrays, recipes,
                                                    calib_summary)
            golden["expected"] = "bundle"
        write_golden(staging / "golden" / "golden.npz", arrays)
        body["device_constraints"] = target.finalize(staging, {**body, "golden": golden}, report, Path(cfg.out).name)
        report("writing the manifest")
        manifest = finalize_manifest(staging, {
            **body, "golden": golden, "build": {"seconds": round(time.perf_counter() - t0, 1), "checks": checks},
        })
    report(f"bundle written to {cfg.out} in {time.perf_counter() - t0:.1f} s")
    return manifest


def _inputs(cfg: BuildConfig) -> list[Path]:
    """What the build reads: --out may not be, hold or lie inside any of these."""
    return [p for p in (cfg.model, cfg.config, cfg.tokenizer, cfg.calibration, *(f for f, _ in cfg.loras))
            if p is not None]


def _fuse_adapters(cfg: BuildConfig, model: LoadedModel, report: Callable[[str], None]) -> list[dict]:
    """Fuse the --lora files into the torch modules before anything (export, conversion, golden) reads them."""
    if not cfg.loras:
        return []
    return fuse_adapters(model, [LoraSpec(Path(f), float(s)) for f, s in cfg.loras], report)


def _check_options(cfg: BuildConfig, target: Target) -> None:
    assert cfg.precision is not None
    if cfg.precision not in PRECISIONS:
        raise UserError(f"precision '{cfg.precision}' is not supported; available: {', '.join(PRECISIONS)}")
    target.check_precision(cfg.precision)
    if cfg.target_psnr is not None and cfg.precision != "mixed":
        raise UserError("--target-psnr applies to --precision mixed (and --target coreml --palettize mixed) only")
    if cfg.int8_layout != "tensorrt" and cfg.precision not in ("int8", "mixed"):
        raise UserError("--int8-layout applies to --precision int8 and mixed only")
    if cfg.calibration is not None and not target.needs_calibration(cfg.precision, list(COMPONENTS)):
        raise UserError(f"--calibration applies to builds that calibrate (--precision fp16, int8 or mixed; "
                        f"--target coreml --palettize mixed); this {cfg.precision} build uses none: leave it out")
    if cfg.guidance is not None and not (math.isfinite(cfg.guidance) and cfg.guidance > 0):
        raise UserError(f"--guidance must be a finite number > 0; got {cfg.guidance!r}")


# ----------------------------------------------------------------------------------------------- stages

def _calibration_set(job: _Job):
    """The calibration set given with --calibration (checked against the model), or a small one collected
    now into the staging folder (dropped with it after the export); None when the precision needs none."""
    from .calibration import CalibrationSet, collect

    cfg, model = job.cfg, job.model
    if not job.target.needs_calibration(cfg.precision, [g.name for g in job.graphs]):
        return None
    if cfg.calibration is not None:
        job.report(f"reading calibration set {cfg.calibration}")
        calib = CalibrationSet.open(cfg.calibration, model_sha256=model.source.sha256)
        check_same_adapters(calib.manifest.get("loras", []), [LoraSpec(Path(f), s) for f, s in cfg.loras],
                            f"calibration set {cfg.calibration}", "build")
        return calib
    job.report("no --calibration given: collecting a small calibration set (see ldm-export calibrate --help)")
    scratch = job.staging / CALIBRATION_DIR
    collect(cfg.model, scratch, config=cfg.config, tokenizer=cfg.tokenizer, factories=dict(cfg.factories),
            report=job.report, guidance_scale=cfg.guidance, loras=cfg.loras, **AUTO_CALIBRATION)
    return CalibrationSet.open(scratch, model_sha256=model.source.sha256)


def _export_tokenizer(job: _Job) -> dict | None:
    text = job.model.text
    if text is None:
        return None
    job.report("exporting the tokenizer")
    spec = export_tokenizer(text.tokenizer_dir, job.staging / "tokenizer", kind=text.tokenizer_kind,
                            max_length=text.tokenizer_max_length)
    return {**spec, "file": f"tokenizer/{spec['file']}"}


def _export_components(job: _Job, calib) -> tuple[dict[str, dict], list[dict], dict[str, dict]]:
    """Every component: (for targets that compile ONNX) export to ONNX, check it against torch at every size
    and apply the precision's recipe; then compile for the target. Returns the manifest's components, the
    checks, and the recipes."""
    components: dict[str, dict] = {}
    checks: list[dict] = []
    recipes: dict[str, dict] = {}
    exported = job.staging / EXPORT_DIR
    exported.mkdir()
    for g in job.graphs:
        onnx_files: tuple[str, ...] = ()
        recipe = job.cfg.precision
        if job.target.SOURCE == "onnx":
            onnx_files, recipe, record, rows = _onnx_component(job, g, calib, exported)
            checks += rows
            if job.quantized:
                recipes[g.name] = record
        compiled = job.target.compile(CompileJob(job.staging, g.name, onnx_files, g, job.sizes, job.cfg.precision,
                                                 job.report, _component_feeds(calib, g.name)))
        checks += compiled.checks
        if compiled.recipe is not None:
            recipes[g.name] = compiled.recipe
        files = compiled.files
        components[g.name] = {"file": files[0], "external_data": files[1] if len(files) > 1 else None,
                              "precision": recipe, "inputs": g.inputs, "outputs": g.outputs, **compiled.entry}
    shutil.rmtree(exported)
    shutil.rmtree(job.staging / CALIBRATION_DIR, ignore_errors=True)
    return components, checks, recipes


def _onnx_component(job: _Job, g: ComponentGraph, calib, exported: Path) -> tuple[tuple[str, ...], str, dict,
                                                                                 list[dict]]:
    """Export ``g`` to ONNX, check it against torch at every size, apply the precision's recipe. Returns the
    bundle's ONNX files, the recipe's name and record, and the checks."""
    job.report(f"exporting {g.name} to ONNX")
    files = export_onnx(g, exported, job.sizes[0])
    job.report(f"checking {g.name} in ONNX Runtime against torch at {', '.join(f'{w}x{h}' for w, h in job.sizes)}")
    rows = check_against_torch(g, exported / files[0], list(job.sizes), "fp32")
    recipe = component_recipe(job.cfg.precision, g.name)
    if job.quantized:
        job.report(f"quantizing {g.name}: {recipe}")
    record = quantize_component(recipe, exported / files[0], job.staging / f"{g.name}.onnx",
                                _component_feeds(calib, g.name), target_psnr=job.cfg.target_psnr,
                                int8_layout=job.cfg.int8_layout, report=job.report)
    onnx_files = tuple(p.name for p in (job.staging / f"{g.name}.onnx", job.staging / f"{g.name}.onnx.data")
                       if p.exists())
    return onnx_files, recipe, record, rows


def _manifest_body(job: _Job, tokenizer: dict | None, components: dict[str, dict]) -> dict:
    cfg, model, target = job.cfg, job.model, job.target
    (job.staging / "scheduler_config.json").write_text(json.dumps(dict(model.scheduler_config), indent=2) + "\n")
    return {
        "family": model.family, "target": target.name, "precision": cfg.precision,
        "producer": producer(),
        "source": {"format": model.source.format, "name": Path(cfg.model).name, "sha256": model.source.sha256},
        "backend": {"name": target.backend, **({"onnx_opset": OPSET} if target.SOURCE == "onnx" else {}),
                    "versions": target.versions()},
        "device_constraints": target.device_constraints(),
        "latent": model.latent.to_manifest(),
        "autoencoder": {"kind": model.autoencoder_kind},
        "conditioning": model.conditioning.to_manifest(),
        "guidance": _guidance_entry(model, cfg),
        "unet_concat": list(model.unet_concat),
        "resolution": resolution_entry(model, list(job.sizes), target.SIZES),
        "scheduler": dict(model.scheduler_config),
        "scheduler_class": model.scheduler_class,
        **({"tokenizer": tokenizer} if tokenizer else {}),
        "components": components,
    }


def _guidance_entry(model: LoadedModel, cfg: BuildConfig) -> dict:
    """The manifest's ``guidance``: the family's rule, and for guided families the scale ``ldm-run generate``
    uses when none is given (the scale an automatic calibration also samples at)."""
    if model.guidance.rule == "never":
        return model.guidance.to_manifest()
    from .calibration import default_guidance

    scale = cfg.guidance if cfg.guidance is not None else default_guidance(cfg.model)
    return {**model.guidance.to_manifest(), "default_scale": float(scale)}


def _golden_vectors(job: _Job) -> tuple[dict, dict]:
    """The torch reference's golden vectors at the smallest declared size, and the manifest's ``golden``."""
    job.report(f"recording golden vectors ({job.cfg.golden.steps} DDIM steps of the torch reference)")
    w, h = min(job.sizes, key=lambda s: s[0] * s[1])
    req = family_request(job.model, job.cfg.golden, w, h)
    return golden_arrays(job.model, list(job.graphs), req), req.to_manifest("golden/golden.npz")


def _quantized_golden(job: _Job, manifest: dict, arrays: dict, recipes: dict[str, dict],
                      calib_summary: dict | None) -> dict:
    """A quantized bundle's own golden vectors (in ``arrays``, in place), its recipe file, and the manifest's
    ``quantization`` section with the distance to fp32 torch."""
    from .quantized_golden import own_golden

    backend, options = job.target.REFERENCE
    job.report(f"recording the bundle's own golden vectors ({backend}{', ' + options.provider if options.provider else ''})")
    vs_fp32 = own_golden(job.staging, manifest, arrays, list(job.graphs), backend, options)
    (job.staging / "recipe.json").write_text(dumps(recipes, indent=1) + "\n")
    compression = job.target.compression()
    what = compression or job.cfg.precision
    lines, below = _quality_lines(what, vs_fp32)
    for line in lines:
        job.report(line)
    if below and not job.cfg.allow_below_target:
        raise BelowTolerance(f"the {what} bundle misses its quality target ({'; '.join(below)}); "
                             "nothing was written: try another recipe or calibration set, or pass "
                             "--allow-below-target to write it anyway (the shortfall is then recorded)")
    section = {"recipe": job.cfg.precision, **({"compression": compression} if compression else {}),
               "file": "recipe.json", "components": {n: _recipe_summary(r) for n, r in recipes.items()},
               "calibration": calib_summary, "vs_fp32": vs_fp32}
    return {**section, "below_target": below} if below else section


def _component_feeds(calib, name: str):
    return calib.feeds(name) if calib is not None and name in calib.components else None


def _recipe_summary(rec: dict) -> dict:
    """The manifest's short form of a component's recipe (the full record is in recipe.json)."""
    keep = ("recipe", "mode", "layout", "calibrate_method", "target_psnr_db", "psnr_db", "kept_fp32", "fp32_blocks",
            "method", "nbits", "low_nbits", "high_nbits", "high_blocks", "size_bytes")
    out = {}
    for k in keep:
        if k in rec:
            v = rec[k]
            out[k] = [x["name"] if isinstance(x, dict) and "name" in x else x for x in v] if isinstance(v, list) else v
    return out


def _quality_lines(precision: str, vs_fp32: dict) -> tuple[list[str], list[str]]:
    """The report lines of the quantized bundle's distance to fp32 torch, and the targets it misses
    (``precision``: the key of its quality target, a precision or a compression)."""
    from ldm_runtime.tolerances import quality_target

    q = quality_target(precision)
    lines, below = [], []
    rows = [(name, f"{name}: {db:.1f} dB vs fp32 torch on the golden inputs", db, q.component_psnr_db)
            for name, db in vs_fp32["components"].items()]
    rows.append(("golden image", f"golden image: {vs_fp32['image_psnr_db']:.1f} dB vs fp32 torch",
                 vs_fp32["image_psnr_db"], q.image_psnr_db))
    for name, line, db, target in rows:
        miss = target is not None and db < target
        lines.append(f"  {line}" + (f"  BELOW the {precision} target {target:g} dB" if miss else ""))
        if miss:
            below.append(f"{name} {db:.1f} dB < {target:g} dB")
    return lines, below

