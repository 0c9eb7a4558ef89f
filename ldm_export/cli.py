"""``ldm-export``: build deployable bundles from trained latent diffusion models and check their parity.

A thin shell over :mod:`ldm_export.build` and :mod:`ldm_export.parity`.
"""

from __future__ import annotations

import signal
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import click

from ldm_runtime.cli_types import finite
from ldm_runtime.errors import UserError
from ldm_runtime.exits import OneLineGroup, exit_codes
from ldm_runtime.jsonio import dumps
from ldm_runtime.outputs import atomic_write_text, check_output_file
from ldm_runtime.runners import BACKENDS
from ldm_runtime.samplers import SAMPLERS

from .build import PRECISIONS, BuildConfig
from .demo import GUIDANCE as DEMO_GUIDANCE
from .demo import MODEL_DIR as DEMO_MODEL
from .golden import GOLDEN
from .resolution import parse_resolution
from .targets import TARGETS


user_errors = exit_codes("ldm-export")


def _model_path(model: str | None) -> Path:
    if model is not None:
        return Path(model)
    if not (DEMO_MODEL / "model_index.json").is_file():
        raise UserError("no MODEL given and the embedded demo model is not installed; pass a diffusers folder")
    return DEMO_MODEL


def _opt_path(p: str | None) -> Path | None:
    return None if p is None else Path(p)


def _quiet_libraries() -> None:
    """Keep diffusers/transformers chatter (progress bars, their own deprecation notices) out of our output.
    Only those libraries' FutureWarnings and DeprecationWarnings are filtered, nothing process-wide."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(diffusers|transformers|torch|accelerate)(\.|$)")
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ldm-export")
def main() -> None:
    """Export trained latent diffusion models to bundles for edge runtimes, and check their parity."""


def source_options(fn):
    for opt in reversed([
        click.option("--config", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="The original YAML config, when MODEL is a CompVis/Stability single-file checkpoint "
                          "(.ckpt or .safetensors)."),
        click.option("--tokenizer", type=click.Path(file_okay=False, exists=True), default=None,
                     help="Tokenizer folder (vocab.json + merges.txt) for a single-file checkpoint."),
        click.option("--unet", "f_unet", metavar="PKG.MODULE:FN", help="Factory of a custom UNet (MODEL is then a "
                     "custom model .json; see docs/custom_models.md for the call signatures)."),
        click.option("--decoder", "f_decoder", metavar="PKG.MODULE:FN", help="Factory of a custom decoder."),
        click.option("--encoder", "f_encoder", metavar="PKG.MODULE:FN", help="Factory of a custom encoder."),
        click.option("--text-encoder", "f_text", metavar="PKG.MODULE:FN", help="Factory of a custom text encoder."),
    ]):
        fn = opt(fn)
    return fn


def _target_options(**given) -> tuple[tuple[str, object], ...]:
    """The target options the user gave (a target refuses those it does not take)."""
    if given.get("workspace") is not None:
        from ldm_runtime.tensorrt.prepare import parse_size

        given["workspace"] = parse_size(given["workspace"])
    if given.get("timing_cache") is not None:
        given["timing_cache"] = Path(given["timing_cache"])
    return tuple((k, v) for k, v in given.items() if v is not None)


def _split_target_options(target: str, target_psnr, **given) -> dict:
    """BuildConfig's ``target_options`` and ``target_psnr``: --target-psnr goes to the target when it takes it
    (Core ML's --palettize mixed), else to the build's mixed recipe."""
    from .targets import target_class

    if target_psnr is not None and "target_psnr" in target_class(target).OPTIONS:
        return {"target_psnr": None, "target_options": _target_options(target_psnr=target_psnr, **given)}
    return {"target_psnr": target_psnr, "target_options": _target_options(**given)}


def lora_option(what: str):
    return click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
                        help="A LoRA adapter (diffusers/PEFT or kohya/A1111 .safetensors) fused into the UNet and text "
                             f"encoder at SCALE (default 1; repeatable: adapters add), {what} See docs/adapters.md.")


def _loras(texts: tuple[str, ...]) -> tuple[tuple[Path, float], ...]:
    from .lora import parse_spec

    return tuple((s.path, s.scale) for s in map(parse_spec, texts))


def executor_options(fn):
    for opt in reversed([
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="Where the tasks (one per prompt × seed) run: local (this process, one at a time) or "
                          "ray (Ray workers; needs pip install \"ldm-export[ray]\"). The result is the same."),
        click.option("--ray-address", default=None, metavar="ADDR",
                     help="--executor ray: the cluster to join (e.g. ray://head:10001 or auto). Default: start a "
                          "local Ray cluster for this command."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="--executor ray: worker processes, each loading the model once [default: one per CPU]."),
        click.option("--resume", is_flag=True,
                     help="Continue an interrupted run from the tasks it finished (kept beside the output)."),
    ]):
        fn = opt(fn)
    return fn


def _executor(executor: str, ray_address: str | None, workers: int | None):
    from .sweep import ExecutorConfig

    cfg = ExecutorConfig(kind=executor, address=ray_address, workers=workers)
    cfg.check()
    return cfg


def _factories(f_unet, f_decoder, f_encoder, f_text) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in (("unet", f_unet), ("decoder", f_decoder), ("encoder", f_encoder),
                                     ("text_encoder", f_text)) if v)


@main.command()
@click.argument("model", required=False, type=click.Path())
@source_options
@click.option("--target", type=click.Choice(list(TARGETS)), default="onnx", show_default=True,
              help="What to compile for: onnx (ONNX Runtime on CPU/GPU/CoreML); tensorrt (TensorRT-ready ONNX "
                   "graphs checked against the device's ONNX parser, and engines for this machine's GPU when it "
                   "has TensorRT; `ldm-run prepare` builds them on the device otherwise; docs/tensorrt.md); coreml "
                   "(Core ML ML Programs for macOS/iOS, checked here with the coreml-reference evaluator; "
                   "docs/coreml.md).")
@click.option("--deployment-target", default=None, type=click.Choice(["macOS14", "iOS17", "iOS18"]),
              help="--target coreml: the oldest OS the programs run on [default: macOS14]. iOS18 allows grouped "
                   "palettes; on iOS targets a UNet over 1 GiB of weights ships in two chunks.")
@click.option("--palettize", default=None, type=click.Choice(["6", "4", "mixed"]),
              help="--target coreml: k-means palettize the UNet's and text encoder's weights to 6 or 4 bits, or "
                   "mixed: 4 bits with the most sensitive UNet blocks at 6 until --target-psnr is met.")
@click.option("--weights", default=None, type=click.Choice(["int8"]),
              help="--target coreml: int8 weights (symmetric, per output channel) for the UNet and text encoder.")
@click.option("--min-tensorrt", default=None, metavar="VERSION",
              help="--target tensorrt: the oldest TensorRT the bundle must parse on [default: 10.3, JetPack 6].")
@click.option("--workspace", default=None, metavar="SIZE",
              help="--target tensorrt: the engine builder's memory-pool cap, e.g. 2G (engines built here).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="--target tensorrt: a TensorRT timing cache reused and updated between builds.")
@click.option("--refittable", is_flag=True, default=None,
              help="--target tensorrt: build refittable engines (weights can be swapped without a rebuild).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="bundle", show_default=True,
              help="The bundle folder to write (written atomically).")
@lora_option("before the build. The manifest lists them; parity and calibration sets for this bundle need the "
             "same --lora.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="[default: fp32; fp16 for --target coreml] fp32: the export as is. fp16: fp16 inside, fp32 where the overflow scan finds fp16 "
                   "out of range. int8: int8 UNet (static QDQ, per-channel) and text-encoder weights, fp16 "
                   "autoencoder. mixed: as int8, with the UNet's most sensitive blocks kept in fp32 until "
                   "--target-psnr is met. See docs/quantization.md.")
@click.option("--calibration", type=click.Path(), default=None,
              help="Calibration set from `ldm-export calibrate` (fp16/int8/mixed); it must come from this "
                   "MODEL. Default: collect a small one (16 trajectories × 20 steps) during the build.")
@click.option("--int8-layout", type=click.Choice(["tensorrt", "ort-cpu"]), default="tensorrt", show_default=True,
              help="--precision int8/mixed: where the Q/DQ nodes go. tensorrt: the placement TensorRT's explicit "
                   "quantization expects (inputs and weights of Conv/Linear). ort-cpu: the placement ONNX "
                   "Runtime's CPU provider runs as integer kernels (QLinearConv, MatMulIntegerToFloat): faster on "
                   "CPUs, not meant for TensorRT.")
@click.option("--target-psnr", type=finite(min=0, min_open=True), default=None,
              help="--precision mixed (or --target coreml --palettize mixed): the UNet output's PSNR vs fp32 "
                   "(vs the fp16 program) on calibration data, in dB [default: 35].")
@click.option("--resolution", "resolutions", multiple=True, metavar="WxH",
              help="An image size the bundle must serve (repeatable). The first is the default; the bundle "
                   "accepts any multiple of the size step between the smallest and largest. "
                   "Default: the model's native size.")
@click.option("--guidance", type=finite(min=0, min_open=True), default=None,
              help="The default classifier-free guidance scale recorded in the bundle: what `ldm-run generate` "
                   "uses without --guidance, and the scale an automatic calibration samples at. Default: 1.5 for "
                   "the embedded demo model (its documented scale), 7.5 (Stable Diffusion's) otherwise.")
@click.option("--golden-prompt", default=GOLDEN.prompt, show_default=True,
              help="Prompt of the reference trajectory stored as golden vectors.")
@click.option("--golden-steps", default=GOLDEN.steps, show_default=True, type=click.IntRange(1, 50))
@click.option("--overwrite", is_flag=True,
              help="Replace the bundle at --out (only a bundle, and only once the new one is complete).")
@click.option("--allow-below-target", is_flag=True,
              help="Quantized builds: write the bundle even when it misses its recipe's quality target (exit 0, "
                   "the shortfall recorded in the manifest); without it such a build writes nothing and exits 1.")
@user_errors
def build(model, config, tokenizer, target, out, precision, calibration, int8_layout, target_psnr, resolutions,
          guidance, golden_prompt, golden_steps, f_unet, f_decoder, f_encoder, f_text, overwrite, allow_below_target,
          min_tensorrt, workspace, timing_cache, refittable, deployment_target, palettize, weights, loras):
    """Build a bundle from MODEL: a diffusers pipeline folder of any supported family, or an original
    single-file checkpoint with --config (default: the embedded demo model)."""
    _quiet_libraries()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the staging folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    from .build import build as run_build

    cfg = BuildConfig(model=_model_path(model), out=Path(out), config=_opt_path(config),
                      tokenizer=_opt_path(tokenizer), target=target, precision=precision,
                      factories=_factories(f_unet, f_decoder, f_encoder, f_text),
                      resolutions=tuple(parse_resolution(r) for r in resolutions),
                      golden=replace(GOLDEN, prompt=golden_prompt, steps=golden_steps), overwrite=overwrite,
                      calibration=_opt_path(calibration), int8_layout=int8_layout,
                      guidance=guidance, allow_below_target=allow_below_target,
                      loras=_loras(loras),
                      **_split_target_options(target, target_psnr=target_psnr, min_tensorrt=min_tensorrt,
                                              workspace=workspace, timing_cache=timing_cache, refittable=refittable,
                                              deployment_target=deployment_target, palettize=palettize,
                                              weights=weights))
    stage = [0]

    def report(msg: str) -> None:
        stage[0] += 1
        click.echo(f"[{stage[0]:>2}] {msg}", err=True)

    run_build(cfg, report=report)


@main.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--reference", "-r", type=click.Path(), default=None,
              help="The model the bundles were built from (default: the embedded demo model).")
@source_options
@click.option("--class-label", "class_labels", multiple=True, type=int,
              help="Class label to compare on, for class-conditional models (repeatable; default: 0).")
@click.option("--prompt", "prompts", multiple=True, help="Prompt to compare on (repeatable; default: three built-in).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="A UTF-8 file of prompts, one per line ('#' comments and blank lines ignored), instead of --prompt.")
@click.option("--seed", "seeds", multiple=True, type=int, help="Seed (repeatable; default: 0 and 42).")
@click.option("--seeds", "n_seeds", type=click.IntRange(min=1), default=None, metavar="N",
              help="Seeds 0 … N-1, instead of --seed.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--guidance", default=7.5, show_default=True, type=finite())
@click.option("--eta", default=0.0, show_default=True, type=finite(min=0.0))
@click.option("--width", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default="ddim", show_default=True,
              help="The sampler of both sides: the runtime's numpy port against diffusers' own scheduler.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Runtime backend of the bundle side. Default: the bundle's own; a Core ML bundle off macOS "
                   "needs coreml-reference.")
@click.option("--provider", default=None, help="ONNX Runtime execution provider for the runtime side.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--junit", type=click.Path(dir_okay=False), default=None,
              help="Also write JUnit XML: a test case per component check and per request, failures with figures.")
@click.option("--html", type=click.Path(dir_okay=False), default=None,
              help="Also write a self-contained HTML report (images, difference maps, drift plots).")
@lora_option("as the bundles merged it (build --lora): the reference is the adapted model.")
@executor_options
@user_errors
def parity(bundles, reference, config, tokenizer, f_unet, f_decoder, f_encoder, f_text, class_labels, prompts,
           prompts_file, seeds, n_seeds, steps, guidance, eta, width, height, sampler, backend, provider, as_json,
           junit, html, loras, executor, ray_address, workers, resume):
    """Compare each of BUNDLES run by ldm-runtime with the diffusers pipeline of the reference model, over
    prompts × seeds; exit 1 if any is over tolerance."""
    _quiet_libraries()

    from ldm_runtime.request import Request

    from .parity import DEFAULT_PROMPTS, ParitySweep, format_parity
    from .parity_sweep import run_sweep

    outputs = _parity_outputs(junit, html)
    sweep = ParitySweep(bundle=Path(bundles[0]), reference=_model_path(reference), config=_opt_path(config),
                        tokenizer=_opt_path(tokenizer), class_labels=class_labels or (0,),
                        prompts=_sweep_prompts(prompts, prompts_file) or DEFAULT_PROMPTS,
                        seeds=_sweep_seeds(seeds, n_seeds) or (0, 42),
                        base=Request(steps=steps, guidance_scale=guidance, eta=eta, width=width, height=height,
                                     sampler=sampler),
                        backend=backend, provider=provider, factories=_factories(f_unet, f_decoder, f_encoder, f_text),
                        loras=_loras(loras),
                        given=frozenset(k for k, v in (("prompts", prompts or prompts_file),
                                                       ("class_labels", class_labels)) if v))
    result = run_sweep(sweep, tuple(Path(b) for b in bundles), executor=_executor(executor, ray_address, workers),
                       resume=resume, say=lambda m: click.echo(m, err=True))
    _write_parity_outputs(result, outputs)
    if as_json:
        one = len(result.bundles) == 1
        click.echo(dumps(result.bundles[0].report.to_dict() if one else result.to_dict(), indent=2))
    else:
        from .parity_sweep import format_sweep

        click.echo(format_parity(result.bundles[0].report) if len(bundles) == 1 else format_sweep(result))
    sys.exit(0 if result.ok else 1)


def _sweep_prompts(prompts: tuple[str, ...], prompts_file: str | None) -> tuple[str, ...]:
    if prompts and prompts_file:
        raise UserError("--prompt and --prompts FILE both given; use one")
    if prompts_file is None:
        return prompts
    from .calibration import load_prompts

    return tuple(load_prompts(prompts_file).prompts)


def _sweep_seeds(seeds: tuple[int, ...], n: int | None) -> tuple[int, ...]:
    if seeds and n is not None:
        raise UserError("--seed and --seeds N both given; use one")
    return tuple(range(n)) if n is not None else seeds


def _parity_outputs(junit: str | None, html: str | None) -> dict:
    """The report files, checked before any work."""
    return {"junit": check_output_file(junit, "--junit", (".xml",)) if junit else None,
            "html": check_output_file(html, "--html", (".html", ".htm")) if html else None}


def _write_parity_outputs(result, outputs: dict) -> None:
    if outputs["junit"] is not None:
        from ldm_runtime.junit import write_junit

        from .parity_sweep import junit_suites

        write_junit(outputs["junit"], junit_suites(result), name="ldm-export parity")
    if outputs["html"] is not None:
        from .html_report import write_parity_html

        write_parity_html(outputs["html"], result)


@main.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--baseline", type=click.Path(file_okay=False), default=None,
              help="fp32 bundle the adherence images are compared with (default: the first fp32 bundle given).")
@click.option("--adherence", "adherence_prompts", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also generate this many prompts of the demo model's caption grammar with every bundle and "
                   "score prompt adherence (demo model bundles only; 0: skip).")
@click.option("--seeds", default=2, show_default=True, type=click.IntRange(min=1), help="Seeds per adherence prompt.")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--guidance", default=DEMO_GUIDANCE, show_default=True, type=finite(),
              help="Guidance scale of the adherence images (default: the demo model's).")
@click.option("--runs", default=5, show_default=True, type=click.IntRange(min=1),
              help="Timed runs per component (median reported, after one warm-up).")
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default=None,
              help="Sampler of the adherence images (default: each bundle's own).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Runtime backend for the bundles it can run; the others run on their own (e.g. coreml-reference "
                   "for Core ML bundles beside ONNX ones, off macOS).")
@click.option("--provider", default=None, help="ONNX Runtime execution provider (default: the best installed).")
@click.option("--json", "as_json", type=click.Path(dir_okay=False), default=None, help="Also write the rows as JSON.")
@click.option("--html", type=click.Path(dir_okay=False), default=None,
              help="Also write a self-contained HTML report (tables; with --adherence each image beside the "
                   "baseline's and their amplified difference).")
@executor_options
@user_errors
def report(bundles, baseline, adherence_prompts, seeds, steps, guidance, runs, sampler, backend, provider, as_json,
           html, executor, ray_address, workers, resume):
    """Compare BUNDLES of one model built with different recipes: size, per-component latency here, PSNR
    against fp32 torch (components and golden image) and, with --adherence, prompt adherence."""
    import dataclasses

    from .report import ReportConfig, format_report, run_report

    json_file = check_output_file(as_json, "--json", (".json",)) if as_json else None
    html_file = check_output_file(html, "--html", (".html", ".htm")) if html else None
    if baseline is not None and not adherence_prompts:
        raise UserError("--baseline is the bundle the adherence images are compared with: it needs --adherence N")
    cfg = ReportConfig(bundles=tuple(Path(b) for b in bundles), baseline=_opt_path(baseline), runs=runs,
                       adherence_prompts=adherence_prompts, seeds=seeds, steps=steps, guidance_scale=guidance,
                       provider=provider, backend=backend, sampler=sampler,
                       executor=_executor(executor, ray_address, workers), resume=resume)
    keep: dict = {}
    rows = run_report(cfg, say=lambda m: click.echo(m, err=True), keep=keep)
    click.echo(format_report(rows))
    if html_file is not None:
        from .report_sweep import render_report_html

        atomic_write_text(html_file, render_report_html(rows, keep.get("images"), keep.get("base"), keep.get("reps", [])))
    if json_file is not None:
        atomic_write_text(json_file, dumps([dataclasses.asdict(r) for r in rows], indent=1) + "\n")


@main.command()
@click.argument("model", required=False, type=click.Path())
@source_options
@click.option("--prompts", default="auto", show_default=True, metavar="auto|general|shapes|FILE",
              help="Prompts to sample with: 'general' (~300 varied prompts), 'shapes' (the demo model's caption "
                   "grammar), or a UTF-8 text file with one prompt per line ('#' comments and blank lines are "
                   "ignored); 'auto' is shapes for the demo model, general otherwise. Ignored by models without "
                   "text conditioning.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1, 1000),
              help="Sampling steps of each trajectory (use the step count the deployed sampler will use).")
@click.option("--samples", default=64, show_default=True, type=click.IntRange(1),
              help="Trajectories to run: one prompt and one seed each.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seeds the prompt order, the steps picked, and the noise (trajectory k uses SEED+k).")
@click.option("--guidance", default=None, type=finite(),
              help="Classifier-free guidance scale; above 1 the UNet sees both halves (unconditional, conditional). "
                   "Default: the embedded demo model's scale for it, 7.5 otherwise.")
@click.option("--per-trajectory", default=4, show_default=True, type=click.IntRange(1),
              help="UNet inputs kept per trajectory: its steps are split into this many equal bins and one step "
                   "is drawn from each, so every timestep range is represented.")
@click.option("--resolution", default=None, metavar="WxH",
              help="Image size to sample at. Default: the model's native size.")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True,
              help="The calibration folder to write (written atomically; refused if it exists, unless --overwrite).")
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default="ddim", show_default=True,
              help="The trajectories' sampler (diffusers' scheduler of that name): the one the bundle will sample with.")
@click.option("--overwrite", is_flag=True, help="Replace an existing set at --out (only once the new one is complete).")
@lora_option("before sampling, so the activations are the adapted model's (for a build --lora with the same files).")
@executor_options
@user_errors
def calibrate(model, config, tokenizer, f_unet, f_decoder, f_encoder, f_text, prompts, steps, samples, seed, guidance,
              per_trajectory, resolution, sampler, out, overwrite, loras, executor, ray_address, workers, resume):
    """Record a calibration set for quantizing MODEL: the inputs of the UNet (at steps spread over every
    timestep range), the text encoder and the autoencoder along real DDIM trajectories of the torch
    reference (default MODEL: the embedded demo model). Same arguments, same bytes."""
    _quiet_libraries()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    from .calibration import collect, summary_line

    width, height = parse_resolution(resolution) if resolution else (None, None)
    manifest = collect(_model_path(model), Path(out), prompts=prompts, steps=steps, samples=samples, seed=seed,
                       guidance_scale=guidance, per_trajectory=per_trajectory, width=width, height=height,
                       config=_opt_path(config), tokenizer=_opt_path(tokenizer), overwrite=overwrite,
                       factories=dict(_factories(f_unet, f_decoder, f_encoder, f_text)), sampler=sampler,
                       loras=_loras(loras), report=lambda msg: click.echo(msg, err=True),
                       executor=_executor(executor, ray_address, workers), resume=resume)
    click.echo(summary_line(manifest, Path(out)))


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--reference", "-r", type=click.Path(), default=None,
              help="The model the bundle was built from (default: the embedded demo model).")
@click.option("--lora", required=True, type=click.Path(dir_okay=False),
              help="The LoRA file (diffusers/PEFT or kohya/A1111 .safetensors).")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True,
              help="The adapter pack folder to write (atomically).")
@click.option("--overwrite", is_flag=True, help="Replace an existing pack at --out.")
@user_errors
def adapter(bundle, reference, lora, out, overwrite):
    """Write an adapter pack for BUNDLE: the LoRA's low-rank factors keyed by the bundle's own weight names,
    bound to its files, with a golden trajectory; `ldm-run generate BUNDLE --adapter PACK` swaps it in without
    a rebuild (docs/adapters.md)."""
    _quiet_libraries()
    from .adapter_pack import write_pack
    from .lora import parse_spec

    spec = parse_spec(lora)
    meta = write_pack(Path(bundle), _model_path(reference), spec.path, Path(out), overwrite=overwrite,
                      report=lambda m: click.echo(m, err=True))
    size = sum(p.stat().st_size for p in Path(out).iterdir())
    click.echo(f"wrote {out}: {len(meta['entries'])} adapted weights, {size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
