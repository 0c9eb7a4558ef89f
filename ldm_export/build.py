"""``ldm-export build``: load → export ONNX → check against torch → compile → golden vectors → bundle."""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ldm_runtime.errors import UserError

from . import __version__
from .bundle import finalize_manifest, staging_folder
from .export import OPSET, check_against_torch, component_graphs, export_onnx
from .golden import GoldenConfig, golden_arrays, manifest_entry, write_golden
from .loading import LoadedModel, load_model
from .precision import PRECISIONS, component_recipe, needs_calibration, quantize_component
from .targets import get_target
from .tokenizer_export import export_tokenizer


# the calibration set a quantized build collects when none is given (ldm-export calibrate makes bigger ones)
AUTO_CALIBRATION = {"samples": 16, "steps": 20, "per_trajectory": 4, "seed": 0}


@dataclass(frozen=True)
class BuildConfig:
    model: Path
    out: Path
    config: Path | None = None      # original YAML, for single-file checkpoints
    tokenizer: Path | None = None   # tokenizer folder, for single-file checkpoints
    factories: tuple[tuple[str, str], ...] = ()  # (component, "pkg.module:function"), custom models
    target: str = "onnx"
    precision: str = "fp32"
    resolutions: tuple[tuple[int, int], ...] = ()   # empty: the model's native resolution
    golden: GoldenConfig = field(default_factory=GoldenConfig)
    overwrite: bool = False
    calibration: Path | None = None  # calibration set folder (fp16/int8/mixed); None: collect a small one
    target_psnr: float | None = None  # mixed precision: UNet output PSNR target in dB
    int8_layout: str = "tensorrt"     # int8/mixed: Q/DQ placement, "tensorrt" or "ort-cpu"
    guidance: float | None = None     # the bundle's default guidance scale; None: calibration.default_guidance


def parse_resolution(text: str) -> tuple[int, int]:
    """'512x768' → (512, 768) (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"resolution '{text}' is not WIDTHxHEIGHT (e.g. 512x512)") from None
    if w <= 0 or h <= 0:
        raise UserError(f"resolution '{text}' must be positive")
    return w, h


def check_resolutions(model: LoadedModel, sizes: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    k = model.size_multiple
    sizes = list(sizes) or [model.default_resolution]
    for w, h in sizes:
        if w % k or h % k:
            raise UserError(
                f"resolution {w}x{h} is not a multiple of {k} (autoencoder factor {model.vae_factor} × UNet "
                f"downsampling {k // model.vae_factor}); try {max(k, round(w / k) * k)}x{max(k, round(h / k) * k)}")
    return sizes


def resolution_entry(model: LoadedModel, sizes: list[tuple[int, int]]) -> dict:
    return {"multiple_of": model.size_multiple, "declared": [list(s) for s in sizes],
            "default": list(sizes[0]), "min": [min(w for w, _ in sizes), min(h for _, h in sizes)],
            "max": [max(w for w, _ in sizes), max(h for _, h in sizes)]}


def _producer() -> dict:
    import diffusers
    import torch

    return {"name": "ldm-export", "version": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__}


def build(cfg: BuildConfig, report: Callable[[str], None] = lambda msg: None) -> dict:
    """Build a bundle at ``cfg.out``; returns its manifest. ``report`` receives one line per stage."""
    if cfg.precision not in PRECISIONS:
        raise UserError(f"precision '{cfg.precision}' is not supported; available: {', '.join(PRECISIONS)}")
    if cfg.target_psnr is not None and cfg.precision != "mixed":
        raise UserError("--target-psnr applies to --precision mixed only")
    if cfg.int8_layout != "tensorrt" and cfg.precision not in ("int8", "mixed"):
        raise UserError("--int8-layout applies to --precision int8 and mixed only")
    target = get_target(cfg.target)
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise UserError(f"{cfg.out} already exists; choose another --out or pass --overwrite")
    t0 = time.perf_counter()
    report(f"loading {cfg.model}")
    model = load_model(cfg.model, cfg.config, cfg.tokenizer, dict(cfg.factories))
    sizes = check_resolutions(model, cfg.resolutions)
    graphs = component_graphs(model)
    quantized = cfg.precision != "fp32"
    components: dict[str, dict] = {}
    checks: list[dict] = []
    recipes: dict[str, dict] = {}
    with staging_folder(cfg.out, cfg.overwrite) as staging:
        calib = calib_summary = None
        if needs_calibration(cfg.precision, [g.name for g in graphs]):
            calib = _calibration_set(cfg, model, staging / ".calibration", report)
            calib_summary = calib.summary()  # before a set collected into the staging folder is dropped
        tokenizer = None
        if model.conditioning["kind"] == "text":
            report("exporting the tokenizer")
            kind = "bert" if model.conditioning.get("encoder") == "ldmbert" else "clip"
            tokenizer = export_tokenizer(model.tokenizer_dir, staging / "tokenizer", kind=kind,
                                         max_length=model.tokenizer_max_length)
            tokenizer["file"] = f"tokenizer/{tokenizer['file']}"
        fp32_dir = staging / ".fp32" if quantized else staging
        fp32_dir.mkdir(exist_ok=True)
        for g in graphs:
            report(f"exporting {g.name} to ONNX")
            files = export_onnx(g, fp32_dir, sizes[0])
            report(f"checking {g.name} in ONNX Runtime against torch at {', '.join(f'{w}x{h}' for w, h in sizes)}")
            checks += check_against_torch(g, fp32_dir / files[0], sizes, "fp32")
            recipe = component_recipe(cfg.precision, g.name)
            if quantized:
                report(f"quantizing {g.name}: {recipe}")
                feeds = _component_feeds(calib, g.name)
                recipes[g.name] = quantize_component(recipe, fp32_dir / files[0], staging / f"{g.name}.onnx", feeds,
                                                     target_psnr=cfg.target_psnr, int8_layout=cfg.int8_layout,
                                                     report=report)
                files = [p.name for p in (staging / f"{g.name}.onnx", staging / f"{g.name}.onnx.data") if p.exists()]
            files = target.compile(staging, g.name, files)
            components[g.name] = {"file": files[0], "external_data": files[1] if len(files) > 1 else None,
                                  "precision": recipe, "inputs": g.inputs, "outputs": g.outputs}
        if quantized:
            shutil.rmtree(fp32_dir)
        shutil.rmtree(staging / ".calibration", ignore_errors=True)
        (staging / "scheduler_config.json").write_text(json.dumps(model.scheduler_config, indent=2) + "\n")
        body = {
            "family": model.family, "target": target.name, "precision": cfg.precision,
            "producer": _producer(),
            "source": {"format": model.source_format, "name": Path(cfg.model).name, "sha256": model.source_sha256},
            "backend": {"name": target.backend, "onnx_opset": OPSET, "versions": target.versions()},
            "device_constraints": target.device_constraints(),
            "latent": {"channels": model.latent_channels, "downsample_factor": model.vae_factor,
                       "scaling_factor": model.scaling_factor, "shift_factor": model.shift_factor,
                       "decode_scale": model.decode_scale},
            "autoencoder": {"kind": model.autoencoder_kind},
            "conditioning": model.manifest_conditioning,
            "guidance": _guidance_entry(model, cfg),
            "unet_concat": model.unet_concat,
            "resolution": resolution_entry(model, sizes),
            "scheduler": model.scheduler_config,
            **({"tokenizer": tokenizer} if tokenizer else {}),
            "components": components,
        }
        report(f"recording golden vectors ({cfg.golden.steps} DDIM steps of the torch reference)")
        w, h = min(sizes, key=lambda s: s[0] * s[1])
        arrays, request = golden_arrays(model, graphs, cfg.golden, w, h)
        golden = manifest_entry(request, "golden/golden.npz")
        if quantized:
            report("recording the quantized bundle's own golden vectors (ONNX Runtime, CPU)")
            from .quantized_golden import own_golden

            vs_fp32 = own_golden(staging, {**body, "golden": golden}, arrays, graphs)
            (staging / "recipe.json").write_text(json.dumps(recipes, indent=1, default=float) + "\n")
            body["quantization"] = {
                "recipe": cfg.precision, "file": "recipe.json",
                "components": {n: _recipe_summary(r) for n, r in recipes.items()},
                "calibration": calib_summary,
                "vs_fp32": vs_fp32,
            }
            golden["expected"] = "bundle"
            for line in _quality_lines(cfg.precision, vs_fp32):
                report(line)
        write_golden(staging / "golden" / "golden.npz", arrays)
        report("writing the manifest")
        manifest = finalize_manifest(staging, {
            **body, "golden": golden,
            "build": {"seconds": round(time.perf_counter() - t0, 1), "checks": checks},
        })
    report(f"bundle written to {cfg.out} in {time.perf_counter() - t0:.1f} s")
    return manifest


def _guidance_entry(model: LoadedModel, cfg: BuildConfig) -> dict:
    """The manifest's ``guidance``: the family's rule, and for guided families the scale ``ldm-run generate``
    uses when none is given (the scale an automatic calibration also samples at)."""
    if model.guidance["rule"] == "never":
        return dict(model.guidance)
    from .calibration import default_guidance

    scale = cfg.guidance if cfg.guidance is not None else default_guidance(cfg.model)
    return {**model.guidance, "default_scale": float(scale)}


def _calibration_set(cfg: BuildConfig, model: LoadedModel, scratch: Path, report: Callable[[str], None]):
    """The calibration set given with --calibration (checked against the model), or a small one collected now."""
    from .calibration import CalibrationSet, collect

    if cfg.calibration is not None:
        report(f"reading calibration set {cfg.calibration}")
        return CalibrationSet.open(cfg.calibration, model_sha256=model.source_sha256)
    report("no --calibration given: collecting a small calibration set (see ldm-export calibrate --help)")
    collect(cfg.model, scratch, config=cfg.config, tokenizer=cfg.tokenizer, report=report,
            guidance_scale=cfg.guidance, **AUTO_CALIBRATION)
    return CalibrationSet.open(scratch, model_sha256=model.source_sha256)


def _component_feeds(calib, name: str):
    return calib.feeds(name) if calib is not None and name in calib.components else None


def _recipe_summary(rec: dict) -> dict:
    """The manifest's short form of a component's recipe (the full record is in recipe.json)."""
    keep = ("recipe", "mode", "layout", "calibrate_method", "target_psnr_db", "psnr_db", "kept_fp32", "fp32_blocks")
    out = {}
    for k in keep:
        if k in rec:
            v = rec[k]
            out[k] = [x["name"] if isinstance(x, dict) and "name" in x else x for x in v] if isinstance(v, list) else v
    return out


def _quality_lines(precision: str, vs_fp32: dict) -> list[str]:
    from ldm_runtime.tolerances import quality_target

    q = quality_target(precision)
    lines = []
    for name, db in vs_fp32["components"].items():
        flag = "" if q.component_psnr_db is None or db >= q.component_psnr_db else \
            f"  BELOW the {precision} target {q.component_psnr_db:g} dB"
        lines.append(f"  {name}: {db:.1f} dB vs fp32 torch on the golden inputs{flag}")
    img = vs_fp32["image_psnr_db"]
    flag = "" if img >= q.image_psnr_db else f"  BELOW the {precision} target {q.image_psnr_db:g} dB"
    lines.append(f"  golden image: {img:.1f} dB vs fp32 torch{flag}")
    return lines
