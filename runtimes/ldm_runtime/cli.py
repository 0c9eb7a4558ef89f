"""``ldm-run``: generate images from a bundle, verify its parity on this device, describe it.

A thin shell: each command builds a small config and calls one library function. Exit codes
(:mod:`ldm_runtime.exits`): 0 ok, 1 over tolerance, 2 the user's error (one line), 3 our bug.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

import click

from .cli_types import finite
from .errors import UserError
from .exits import OneLineGroup, exit_codes
from .jsonio import dumps
from .runners import BACKENDS
from .samplers import SAMPLERS


user_errors = exit_codes("ldm-run")


def _open(bundle_dir: str, backend: str | None, low_memory: bool, skip_hash_check: bool, **backend_options):
    """The bundle's pipeline; ``backend_options``: the backend-specific RunnerOptions given on the command line
    (``--provider``, ``--compute-units``, ``--arithmetic``, ``--cache``; None where not given). One the backend would
    ignore is refused."""
    from .bundle import open_bundle
    from .pipeline import Components, Pipeline
    from .runners import RunnerOptions

    bundle = open_bundle(bundle_dir, check_hashes=not skip_hash_check)
    given = {k: Path(v) if k == "cache_dir" else v for k, v in backend_options.items() if v is not None}
    options = RunnerOptions(low_memory=low_memory, **given)
    return Pipeline(bundle, Components(bundle, backend=backend, options=options))


def runtime_options(fn):
    for opt in reversed([
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Runtime backend. Default: the one the bundle was built for (`ldm-run info` shows it)."),
        click.option("--provider", default=None,
                     help="ONNX Runtime execution provider: tensorrt, cuda, coreml, cpu or a full ORT name. "
                          "Default: the first installed of TensorRT > CUDA > CoreML > CPU."),
        click.option("--compute-units", type=click.Choice(["all", "cpu-and-ne", "cpu-and-gpu", "cpu"]), default=None,
                     help="--backend coreml (macOS): where Core ML may run the programs [default: all]."),
        click.option("--arithmetic", type=click.Choice(["program", "fp32"]), default=None,
                     help="--backend coreml-reference: evaluate in the program's precision (fp16 programs in fp16, "
                          "as the device does) or in fp32 [default: program]."),
        click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
                     help="--backend onnxruntime or tensorrt: the cache `ldm-run prepare --cache` wrote (optimized "
                          "graphs, engines) [default: the bundle's engines/ folder]."),
        click.option("--low-memory", is_flag=True,
                     help="Keep only one component in memory at a time (text encoder, then UNet, then decoder)."),
        click.option("--skip-hash-check", is_flag=True,
                     help="Do not check the sha256 of every bundle file on load (faster start on big bundles)."),
    ]):
        fn = opt(fn)
    return fn


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ldm-runtime")
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
def main(verbose: bool) -> None:
    """Run ldm-export bundles without torch: generate images, verify parity, inspect."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--prompt", "-p", "prompts", multiple=True,
              help="What to generate (text-conditioned bundles). Repeat it to generate several images, "
                   "saved as one grid.")
@click.option("--class-label", type=int, default=None, help="Class to generate (class-conditional bundles).")
@click.option("--image", "image_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Input image: the low-resolution image (super-resolution) or the image to inpaint.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Inpainting mask, same size as --image: white = repaint, black = keep.")
@click.option("--negative-prompt", default="", help="What to steer away from (classifier-free guidance).")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="Sampling steps (the UNet runs once per step; pndm's warm-up adds 9 calls, skip_prk_steps 1).")
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default=None,
              help="ddim, pndm (PLMS), dpmpp-2m (DPM-Solver++), euler, euler-a (ancestral), each as diffusers' "
                   "scheduler with the bundle's scheduler config. Default: the bundle's scheduler if it is one "
                   "of these, else ddim.")
@click.option("--guidance", default=None, type=finite(),
              help="Classifier-free guidance scale; ≤ 1 turns guidance off. Default: the scale the bundle "
                   "was built with (`ldm-run info` shows it; 7.5 for bundles that record none).")
@click.option("--eta", default=0.0, show_default=True, type=finite(min=0.0),
              help="DDIM eta (ddim only): 0 is deterministic DDIM, 1 is DDPM-like.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1),
              help="Seed of the first image; image i uses seed + i.")
@click.option("--images-per-prompt", "-n", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Images per prompt (a grid row per prompt).")
@click.option("--width", type=int, default=None, help="Image width (default: the bundle's default).")
@click.option("--height", type=int, default=None, help="Image height (default: the bundle's default).")
@click.option("--noise", type=click.Choice(["torch", "numpy"]), default="torch", show_default=True,
              help="'torch' reproduces torch.randn for the seed (same image as diffusers); 'numpy' uses numpy's.")
@click.option("--out", "-o", default="out.png", show_default=True, type=click.Path(dir_okay=False),
              help="Output PNG: the image, or a grid (a row per prompt) when there are several.")
@click.option("--save-latents", type=click.Path(dir_okay=False), default=None,
              help="Also save the latents after every UNet call to this .npy file (calls, images, C, h, w).")
@click.option("--adapter", "adapters", multiple=True, metavar="PACK[:SCALE]",
              help="An adapter pack from `ldm-export adapter`, swapped in at SCALE (default 1) without a rebuild; "
                   "repeatable: adapters add (docs/adapters.md).")
@runtime_options
@user_errors
def generate(bundle, prompts, class_label, image_path, mask_path, negative_prompt, steps, sampler, guidance, eta,
             seed, images_per_prompt, width, height, noise, out, save_latents, adapters, backend, provider,
             compute_units, arithmetic, cache_dir, low_memory, skip_hash_check):
    """Generate images with the bundle at BUNDLE: from prompts, a class label, or an input image,
    depending on the model family (`ldm-run info BUNDLE` tells which)."""
    from .outputs import IMAGE_FORMATS, check_output_file
    from .request import Request

    out = check_output_file(out, "--out", tuple(IMAGE_FORMATS))
    latents_file = check_output_file(save_latents, "--save-latents", (".npy",)) if save_latents else None
    pipe = _open(bundle, backend, low_memory, skip_hash_check, provider=provider, compute_units=compute_units,
                 arithmetic=arithmetic, cache_dir=cache_dir)
    image, mask = _read_image(image_path, "RGB"), _read_image(mask_path, "L")
    if not prompts:
        if pipe.conditioning["kind"] == "text":
            raise UserError("this bundle is text-conditioned: give a --prompt")
        prompts = ("",)
    base = Request(negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance, eta=eta, width=width,
                   height=height, noise=noise, class_label=class_label, image=image, mask=mask, sampler=sampler)
    jobs = [replace(base, prompt=p, seed=seed + i * images_per_prompt + j)
            for i, p in enumerate(prompts) for j in range(images_per_prompt)]
    for req in {r.prompt: r for r in jobs}.values():
        pipe.check(req)  # a bad size, a missing or foreign input, too many steps: before loading anything
    if adapters:
        from .adapters import parse_adapter

        pipe.components.apply_adapters([parse_adapter(a) for a in adapters])
    results = _generate_all(pipe, jobs, trace=latents_file is not None)
    _write_outputs(results, out, latents_file, cols=images_per_prompt if len(prompts) > 1 else min(len(jobs), 8))
    total = sum(r.seconds["total"] for r in results)
    overhead = sum(r.overhead_seconds for r in results)
    h, w = results[0].image.shape[:2]
    click.echo(f"wrote {out} ({len(jobs)} image{'s' if len(jobs) > 1 else ''} of {w}x{h}, {steps} steps, "
               f"seed {seed}) in {total:.2f} s (runtime overhead {overhead:.3f} s)")


def _generate_all(pipe, jobs: list, trace: bool) -> list:
    from tqdm import tqdm

    pipe.components.load_all()
    calls = len(pipe.sampler_run(pipe.resolved(jobs[0])).timesteps)
    results = []
    with tqdm(total=calls * len(jobs), desc="denoising", unit="step", disable=None) as bar:
        for req in jobs:
            results.append(pipe.generate(req, trace=trace, progress=bar))
    return results


def _write_outputs(results: list, out: Path, latents_file: Path | None, cols: int) -> None:
    """The image (or grid) and the traced latents, each written atomically."""
    import numpy as np
    from PIL import Image

    from .outputs import IMAGE_FORMATS, atomic_write

    images = [r.image for r in results]
    grid = images[0] if len(images) == 1 else make_grid(images, cols=cols)
    atomic_write(out, lambda tmp: Image.fromarray(grid).save(tmp, format=IMAGE_FORMATS[out.suffix.lower()]))
    if latents_file is not None:
        stacked = np.stack([np.concatenate(r.latents) for r in results], axis=1)
        atomic_write(latents_file, lambda tmp: np.save(tmp, stacked, allow_pickle=False))


def _read_image(path: str | None, mode: str):
    """An image file as a uint8 array in ``mode`` ('RGB' or 'L'), or None."""
    if path is None:
        return None
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path}: {e}") from e


def make_grid(images, cols: int):
    """Tile equally sized HxWx3 images into rows of ``cols``, with a 2-pixel white gutter."""
    import numpy as np

    h, w, c = images[0].shape
    rows = -(-len(images) // cols)
    grid = np.full((rows * (h + 2) - 2, cols * (w + 2) - 2, c), 255, np.uint8)
    for k, img in enumerate(images):
        r, q = divmod(k, cols)
        grid[r * (h + 2):r * (h + 2) + h, q * (w + 2):q * (w + 2) + w] = img
    return grid


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--adapter", "adapter", default=None, metavar="PACK",
              help="Replay the adapter pack's golden trajectory instead, with the pack swapped in at scale 1.")
@click.option("--junit", type=click.Path(dir_okay=False), default=None,
              help="Also write the checks as JUnit XML (a test case each, failures with their figures) for CI.")
@runtime_options
@user_errors
def verify(bundle, as_json, adapter, junit, backend, provider, compute_units, arithmetic, cache_dir, low_memory,
           skip_hash_check):
    """Replay the bundle's golden vectors here and compare; exit 1 when over tolerance."""
    from .outputs import check_output_file
    from .verify import format_report, verify_adapter, verify_bundle

    junit_file = check_output_file(junit, "--junit", (".xml",)) if junit else None
    pipeline = _open(bundle, backend, low_memory, skip_hash_check, provider=provider, compute_units=compute_units,
                     arithmetic=arithmetic, cache_dir=cache_dir)
    report = verify_bundle(pipeline) if adapter is None else verify_adapter(pipeline, Path(adapter))
    if junit_file is not None:
        _write_verify_junit(junit_file, report, pipeline, bundle)
    if as_json:
        click.echo(dumps({"ok": report.ok, "first_divergent_step": report.first_divergent_step,
                               "checks": [c.__dict__ for c in report.checks]}, indent=2))
    else:
        click.echo(format_report(report))
    sys.exit(0 if report.ok else 1)


def _write_verify_junit(path, report, pipeline, bundle: str) -> None:
    from . import __version__
    from .junit import write_junit
    from .verify import junit_suite

    m = pipeline.bundle.manifest
    props = {"bundle": str(bundle), "precision": m["precision"], "target": m.get("target", "onnx"),
             "ldm-runtime": __version__}
    write_junit(path, [junit_suite(report, Path(bundle).name, props)], name="ldm-run verify")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="The backend to prepare for. Default: the one the bundle was built for.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Where to keep what is built (default: the bundle's engines/ folder).")
@click.option("--workspace", default=None, metavar="SIZE",
              help="tensorrt: the engine builder's memory-pool cap, e.g. 2G (keep it small on 8 GB Jetsons).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="tensorrt: a timing cache file, reused and updated between builds.")
@click.option("--refittable/--not-refittable", default=None,
              help="tensorrt: build refittable engines (adapters are refitted into them) or not. Default: as the "
                   "bundle was built (ldm-export build --target tensorrt --refittable).")
@click.option("--provider", default=None, help="onnxruntime: the execution provider to optimize for.")
@click.option("--force", is_flag=True, help="Build again even when the cache holds this device's entry.")
@user_errors
def prepare(bundle, backend, cache_dir, workspace, timing_cache, refittable, provider, force):
    """Build what BUNDLE needs on this device, once: TensorRT engines for this GPU (a TensorRT bundle), or
    ONNX Runtime's optimized graphs for this machine (an ONNX bundle), so that later loads are fast. Each is
    written atomically to the cache, keyed by the graph, the library version and the device: a second run
    reuses them, an interrupted one leaves nothing half-written."""
    from .bundle import open_bundle
    from .runners import PrepareOptions, default_backend, runner_class
    from .tensorrt.prepare import parse_size

    b = open_bundle(bundle)
    options = PrepareOptions(cache_dir=Path(cache_dir) if cache_dir else None,
                             workspace_bytes=parse_size(workspace) if workspace else None,
                             timing_cache=Path(timing_cache) if timing_cache else None, refittable=refittable,
                             provider=provider, force=force)
    for line in runner_class(backend or default_backend(b.manifest)).prepare(b, options, lambda m: click.echo(m, err=True)):
        click.echo(line)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest.")
@user_errors
def info(bundle, as_json):
    """Describe a bundle: family, target, precision, components, resolutions."""
    from .bundle import open_bundle
    from .pipeline import guidance_of
    from .samplers import make_sampler

    b = open_bundle(bundle, check_hashes=False)
    m = b.manifest
    if as_json:
        click.echo(dumps(m, indent=2))
        return
    res = m["resolution"]
    g = guidance_of(m)
    default_sampler = make_sampler(None, m["scheduler"], m.get("scheduler_class")).name
    lines = [
        f"bundle      {b.root}",
        f"family      {m['family']} ({m['conditioning']['kind']} conditioning, {m['autoencoder']['kind'].upper()} autoencoder)",
        f"target      {m['target']} ({m['backend']['name']}), precision {m['precision']}",
        f"source      {m['source']['format']} {m['source'].get('name', '')} sha256 {m['source']['sha256'][:16]}…",
        f"resolution  default {res['default'][0]}x{res['default'][1]}, " + (
            f"only {', '.join(f'{w}x{h}' for w, h in res['declared'])}" if res.get("sizes") == "declared" else
            f"range {res['min'][0]}x{res['min'][1]} … {res['max'][0]}x{res['max'][1]}, "
            f"multiple of {res['multiple_of']}"),
        f"latent      {m['latent']['channels']} channels, factor {m['latent']['downsample_factor']}, "
        f"scaling {m['latent']['scaling_factor']}",
        *([f"guidance    default scale {g['default_scale']:g} (rule {g['rule']})"] if g["rule"] != "never" else []),
        f"scheduler   {m.get('scheduler_class', 'DDIMScheduler')} (default sampler {default_sampler}; "
        f"{', '.join(SAMPLERS)} available), {m['scheduler'].get('beta_schedule')} betas, "
        f"{m['scheduler'].get('prediction_type', 'epsilon')} prediction, "
        f"{m['scheduler'].get('timestep_spacing', 'leading')} spacing",
        "components:",
    ]
    for name, comp in m["components"].items():
        size = sum(b.path(f).stat().st_size for f in b.component_files(name) if b.path(f).exists())
        ins = ", ".join(f"{k}{v['shape']}" for k, v in comp["inputs"].items())
        lines.append(f"  {name:<13} {size / 2**20:8.1f} MiB  {comp.get('precision', m['precision']):<16} {ins}")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
