"""``ldm-export``: build deployable bundles from trained latent diffusion models and check their parity.

A thin shell over :mod:`ldm_export.build` and :mod:`ldm_export.parity`.
"""

from __future__ import annotations

import json
import signal
import sys
import warnings
from pathlib import Path

import click

from ldm_runtime.cli import user_errors

from .build import PRECISIONS, BuildConfig, parse_resolution
from .golden import GoldenConfig
from .targets import TARGETS

DEMO_MODEL = Path(__file__).parent / "demo" / "model"


def _model_path(model: str | None) -> Path:
    if model is not None:
        return Path(model)
    if not (DEMO_MODEL / "model_index.json").is_file():
        from ldm_runtime.errors import UserError

        raise UserError("no MODEL given and the embedded demo model is not installed; pass a diffusers folder")
    return DEMO_MODEL


def _opt_path(p: str | None) -> Path | None:
    return None if p is None else Path(p)


def _quiet_libraries() -> None:
    """Keep diffusers/transformers chatter (progress bars, deprecations) out of our output."""
    warnings.filterwarnings("ignore")
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    ]):
        fn = opt(fn)
    return fn


@main.command()
@click.argument("model", required=False, type=click.Path())
@source_options
@click.option("--target", type=click.Choice(TARGETS), default="onnx", show_default=True,
              help="What to compile for: onnx (ONNX Runtime on CPU/GPU/CoreML).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="bundle", show_default=True,
              help="The bundle folder to write (written atomically).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--resolution", "resolutions", multiple=True, metavar="WxH",
              help="An image size the bundle must serve (repeatable). The first is the default; the bundle "
                   "accepts any multiple of the size step between the smallest and largest. "
                   "Default: the model's native size.")
@click.option("--golden-prompt", default=GoldenConfig.prompt, show_default=True,
              help="Prompt of the reference trajectory stored as golden vectors.")
@click.option("--golden-steps", default=GoldenConfig.steps, show_default=True, type=click.IntRange(1, 50))
@click.option("--unet", "f_unet", metavar="PKG.MODULE:FN", help="Factory of a custom UNet (MODEL is then a "
              "custom model .json; see docs/custom_models.md for the call signatures).")
@click.option("--decoder", "f_decoder", metavar="PKG.MODULE:FN", help="Factory of a custom decoder.")
@click.option("--encoder", "f_encoder", metavar="PKG.MODULE:FN", help="Factory of a custom encoder.")
@click.option("--text-encoder", "f_text", metavar="PKG.MODULE:FN", help="Factory of a custom text encoder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out (only once the new one is complete).")
@user_errors
def build(model, config, tokenizer, target, out, precision, resolutions, golden_prompt, golden_steps, f_unet,
          f_decoder, f_encoder, f_text, overwrite):
    """Build a bundle from MODEL: a diffusers pipeline folder of any supported family, or an original
    single-file checkpoint with --config (default: the embedded demo model)."""
    _quiet_libraries()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the staging folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    from .build import build as run_build

    cfg = BuildConfig(model=_model_path(model), out=Path(out), config=_opt_path(config),
                      tokenizer=_opt_path(tokenizer), target=target, precision=precision,
                      factories=tuple((k, v) for k, v in (("unet", f_unet), ("decoder", f_decoder),
                                                          ("encoder", f_encoder), ("text_encoder", f_text)) if v),
                      resolutions=tuple(parse_resolution(r) for r in resolutions),
                      golden=GoldenConfig(prompt=golden_prompt, steps=golden_steps), overwrite=overwrite)
    stage = [0]

    def report(msg: str) -> None:
        stage[0] += 1
        click.echo(f"[{stage[0]:>2}] {msg}", err=True)

    run_build(cfg, report=report)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--reference", "-r", type=click.Path(), default=None,
              help="The model the bundle was built from (default: the embedded demo model).")
@source_options
@click.option("--class-label", "class_labels", multiple=True, type=int,
              help="Class label to compare on, for class-conditional models (repeatable; default: 0).")
@click.option("--prompt", "prompts", multiple=True, help="Prompt to compare on (repeatable; default: three built-in).")
@click.option("--seed", "seeds", multiple=True, type=int, help="Seed (repeatable; default: 0 and 42).")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--guidance", default=7.5, show_default=True, type=float)
@click.option("--eta", default=0.0, show_default=True, type=click.FloatRange(min=0.0))
@click.option("--width", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--provider", default=None, help="ONNX Runtime execution provider for the runtime side.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@user_errors
def parity(bundle, reference, config, tokenizer, class_labels, prompts, seeds, steps, guidance, eta, width, height,
           provider, as_json):
    """Compare BUNDLE run by ldm-runtime with the diffusers pipeline of the reference model; exit 1 if over tolerance."""
    _quiet_libraries()
    from ldm_runtime.runners.onnxruntime import resolve_providers

    from .parity import DEFAULT_PROMPTS, ParityConfig, format_parity, run_parity

    cfg = ParityConfig(bundle=Path(bundle), reference=_model_path(reference), config=_opt_path(config),
                       tokenizer=_opt_path(tokenizer), class_labels=class_labels or (0,),
                       prompts=prompts or DEFAULT_PROMPTS,
                       seeds=seeds or (0, 42), steps=steps, guidance_scale=guidance, eta=eta, width=width,
                       height=height, providers=tuple(resolve_providers(provider)))
    report = run_parity(cfg, report_line=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_parity(report))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
