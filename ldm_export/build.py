"""``ldm-export build``: load → export ONNX → check against torch → compile → golden vectors → bundle."""

from __future__ import annotations

import json
import platform
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
from .targets import get_target
from .tokenizer_export import export_tokenizer

PRECISIONS = ("fp32",)


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
        raise UserError(f"precision '{cfg.precision}' is not supported yet; available: {', '.join(PRECISIONS)}")
    target = get_target(cfg.target)
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise UserError(f"{cfg.out} already exists; choose another --out or pass --overwrite")
    t0 = time.perf_counter()
    report(f"loading {cfg.model}")
    model = load_model(cfg.model, cfg.config, cfg.tokenizer, dict(cfg.factories))
    sizes = check_resolutions(model, cfg.resolutions)
    graphs = component_graphs(model)
    components: dict[str, dict] = {}
    checks: list[dict] = []
    with staging_folder(cfg.out, cfg.overwrite) as staging:
        tokenizer = None
        if model.conditioning["kind"] == "text":
            report("exporting the tokenizer")
            kind = "bert" if model.conditioning.get("encoder") == "ldmbert" else "clip"
            tokenizer = export_tokenizer(model.tokenizer_dir, staging / "tokenizer", kind=kind,
                                         max_length=model.tokenizer_max_length)
            tokenizer["file"] = f"tokenizer/{tokenizer['file']}"
        for g in graphs:
            report(f"exporting {g.name} to ONNX")
            files = export_onnx(g, staging, sizes[0])
            report(f"checking {g.name} in ONNX Runtime against torch at {', '.join(f'{w}x{h}' for w, h in sizes)}")
            checks += check_against_torch(g, staging / files[0], sizes, cfg.precision)
            files = target.compile(staging, g.name, files)
            components[g.name] = {"file": files[0], "external_data": files[1] if len(files) > 1 else None,
                                  "inputs": g.inputs, "outputs": g.outputs}
        report(f"recording golden vectors ({cfg.golden.steps} DDIM steps of the torch reference)")
        w, h = min(sizes, key=lambda s: s[0] * s[1])
        arrays, request = golden_arrays(model, graphs, cfg.golden, w, h)
        write_golden(staging / "golden" / "golden.npz", arrays)
        (staging / "scheduler_config.json").write_text(json.dumps(model.scheduler_config, indent=2) + "\n")
        report("writing the manifest")
        manifest = finalize_manifest(staging, {
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
            "guidance": model.guidance,
            "unet_concat": model.unet_concat,
            "resolution": resolution_entry(model, sizes),
            "scheduler": model.scheduler_config,
            **({"tokenizer": tokenizer} if tokenizer else {}),
            "components": components,
            "golden": manifest_entry(request, "golden/golden.npz"),
            "build": {"seconds": round(time.perf_counter() - t0, 1), "checks": checks},
        })
    report(f"bundle written to {cfg.out} in {time.perf_counter() - t0:.1f} s")
    return manifest
