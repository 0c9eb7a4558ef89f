"""Train the embedded demo latent diffusion model on procedural shapes (CPU only).

    python -m ldm_export.demo.train --out ldm_export/demo/model [--seed 0] [--threads 2] [--minutes 60]

Stages, LDM style (Rombach et al. 2022):

1. a KL-regularised ``AutoencoderKL`` (downsampling factor 4: 32x32x3 images to
   8x8x8 latents), trained with an edge-weighted L1 + L2 reconstruction loss and a
   small KL weight; the latent scaling factor is 1 / std of the latents, stored in the
   vae config (``scaling_factor``);
2. a small CLIP-format text encoder (``CLIPTextModel``, own BPE tokenizer in CLIP
   ``vocab.json`` + ``merges.txt`` format) trained jointly with
3. a ``UNet2DConditionModel`` with cross-attention (at the 4 x 4 level and in the
   mid block), epsilon prediction, SD's
   scaled-linear beta schedule (0.00085 to 0.012, 1000 steps), 10 % caption
   dropout for classifier-free guidance, min-SNR loss weighting and an EMA of
   the weights.

The autoencoder trains in two phases (16 x 16 crops, then full images) and the
diffusion model in one cosine schedule (optionally more phases, each continuing from
the previous one's EMA weights); see docs/demo_model.md. The shipped model (all
defaults, one command) took 28-32 minutes in all on 2 cores with ``--threads 2``.

The result is saved as an ordinary diffusers ``StableDiffusionPipeline`` folder
with a ``DDIMScheduler`` config. Everything is seeded: the same seed, step
counts and thread count reproduce the same weights. ``--minutes`` is only a
safety cap: if it is hit the diffusion stage stops early (and the run is then
no longer reproducible); it is logged.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import GUIDANCE, SCHEDULER, bpe, shapes
from .train_autoencoder import autoencoder_psnr, edge_weights, encode_all, train_autoencoder
from .train_common import IMAGE_SIZE, MAX_LENGTH, TEXT_CONFIG, UNET_CONFIG, VAE_CONFIG, Logger, to_tensor
from .train_diffusion import train_diffusion

__all__ = ["MAX_LENGTH", "edge_weights", "main", "parse_args", "to_tensor", "write_tokenizer"]


def write_tokenizer(folder: Path, words: list[str], model_max_length: int = MAX_LENGTH) -> None:
    """A CLIP-format BPE tokenizer whose merges make every grammar word a single token
    (:func:`ldm_export.demo.bpe.write_clip_tokenizer` until no word has two symbols left)."""
    bpe.write_clip_tokenizer(folder, words, model_max_length=model_max_length)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (every option has the shipped model's value as its default)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="pipeline folder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=None, help="safety cap on total wall time")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (the shipped weights: 2; another count gives slightly different weights)")
    ap.add_argument("--n-train", type=int, default=30000)
    ap.add_argument("--n-val", type=int, default=512)
    ap.add_argument("--ae-steps", type=int, default=2500)
    ap.add_argument("--ae-batch", type=int, default=32)
    ap.add_argument("--ae-crop", type=int, default=16, help="autoencoder training crop size (phase 1)")
    ap.add_argument("--ae-full-steps", type=int, default=600, help="full-image autoencoder steps (phase 2)")
    ap.add_argument("--ae-full-batch", type=int, default=16)
    ap.add_argument("--ae-full-lr", type=float, default=2e-4)
    ap.add_argument("--reuse-phase1", action="store_true",
                    help="reuse <out>.work/vae_phase1 (from an earlier run with the same arguments)")
    ap.add_argument("--ae-lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    ap.add_argument("--ae-edge-weight", type=float, default=5.0,
                    help="extra reconstruction-loss weight on pixels next to a colour edge (0: plain loss)")
    ap.add_argument("--unet-steps", type=int, default=6000)
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the saved diffusion weights")
    ap.add_argument("--unet-steps2", type=int, default=0,
                    help="optional diffusion phase 2 steps (from phase 1's EMA, fresh optimizer; 0: none)")
    ap.add_argument("--unet-lr2", type=float, default=5e-4)
    ap.add_argument("--unet-steps3", type=int, default=0, help="optional diffusion phase 3 steps (from phase 2's EMA; 0: none)")
    ap.add_argument("--unet-lr3", type=float, default=3e-4)
    ap.add_argument("--resume-from", type=Path, default=None,
                    help="pipeline folder holding the result of phases 1-2 (autoencoder + diffusion phase 2 of an "
                         "earlier run with the same arguments): load it and run phase 3 only (--unet-steps3 N)")
    ap.add_argument("--checkpoint-every", type=int, default=0,
                    help="save the EMA weights every N steps of the last phase to <out>.work/ckpt_<step>")
    ap.add_argument("--reuse-diffusion-phase1", action="store_true",
                    help="reuse <out>.work/diffusion_phase1 (from an earlier run with the same arguments)")
    ap.add_argument("--stage", choices=("all", "ae", "diffusion"), default="all",
                    help="ae: train and cache the autoencoder only; diffusion: reuse the cached one")
    ap.add_argument("--keep-work", action="store_true", help="keep <out>.work (the cached autoencoder)")
    ap.add_argument("--fp16", action="store_true", help="store weights in float16")
    ap.add_argument("--log", type=Path, default=None, help="training log JSON (default: <out>/../training_log.json)")
    ap.add_argument("--grid", type=Path, default=None, help="sample grid PNG to write after training")
    ap.add_argument("--guidance", type=float, default=GUIDANCE, help="guidance scale for the sample grid")
    args = ap.parse_args(argv)
    if args.resume_from is not None and args.unet_steps3 <= 0:
        ap.error("--resume-from runs diffusion phase 3 only: give it --unet-steps3 N")
    return args


@dataclass
class _Run:
    """One training run: its arguments, log, work folder and clock (time credited from earlier runs)."""

    args: argparse.Namespace
    log: Logger
    work: Path
    t0: float
    deadline: float | None

    def credit(self, seconds: float) -> None:
        """Count ``seconds`` of an earlier run whose result is reused into this run's total."""
        self.t0 -= seconds


@dataclass
class _Autoencoder:
    vae: object
    lat_mean: object   # posterior means of the training images (torch)
    lat_std: object
    scaling: float
    seconds: float


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    log = Logger(args.log or args.out.parent / "training_log.json")
    log.data["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    log.data["configs"] = {"vae": VAE_CONFIG, "unet": UNET_CONFIG, "text": TEXT_CONFIG, "scheduler": SCHEDULER}
    # stage 1 is cached in <out>.work/vae so that the stages can run as separate invocations
    run = _Run(args, log, args.out.parent / (args.out.name + ".work"), t0,
               t0 + 60 * args.minutes if args.minutes else None)
    imgs, caps, _ = shapes.make_dataset(args.n_train, seed=args.seed)
    val_imgs, _, _ = shapes.make_dataset(args.n_val, seed=args.seed + 1_000_003)
    log.log("events", stage="data", n_train=len(imgs), n_val=len(val_imgs), unique_captions=len(set(caps)))
    ae = _autoencoder_stage(run, imgs, val_imgs)
    if ae is None:  # --stage ae
        return
    tok_dir = args.out.parent / (args.out.name + ".tokenizer.tmp")
    write_tokenizer(tok_dir, shapes.vocabulary())
    unet, text, early = _diffusion_stage(run, ae, caps, tok_dir)
    _save(run, ae, unet, text, tok_dir, early)


# ----------------------------------------------------------------------------- stage 1

def _autoencoder_stage(run: _Run, imgs, val_imgs) -> _Autoencoder | None:
    """Train the autoencoder (or take it from --resume-from, or from the cache); None after --stage ae."""
    args = run.args
    if args.resume_from is not None:
        return _resumed_autoencoder(run, imgs)
    if args.stage in ("all", "ae") or not (run.work / "vae").exists():
        ae = _train_autoencoder(run, imgs, val_imgs)
        return None if args.stage == "ae" else ae
    return _cached_autoencoder(run, imgs)


def _resumed_autoencoder(run: _Run, imgs) -> _Autoencoder:
    from diffusers import AutoencoderKL

    args, log = run.args, run.log
    vae = AutoencoderKL.from_pretrained(args.resume_from / "vae").eval()
    prev_file = args.resume_from.parent / "training_log.json"
    prev_log = json.loads(prev_file.read_text()) if prev_file.exists() else {}
    for key in ("autoencoder", "autoencoder_summary", "diffusion"):
        if key in prev_log:
            log.data[key] = prev_log[key]
    prev_summary = prev_log.get("summary", {})
    run.credit(60 * prev_summary.get("total_minutes", 0.0))  # report the total time of all stages
    lat_mean, lat_std = encode_all(vae, imgs)
    log.log("events", stage="resumed", path=str(args.resume_from), previous_minutes=prev_summary.get("total_minutes"))
    return _Autoencoder(vae, lat_mean, lat_std, float(vae.config.scaling_factor),
                        60 * prev_summary.get("autoencoder_minutes", 0.0))


def _phase1_autoencoder(run: _Run, imgs, val_imgs):
    """Phase 1 (crops): trained, or reused from <out>.work/vae_phase1 (identical: same seed and steps)."""
    from diffusers import AutoencoderKL

    args, log, p1 = run.args, run.log, run.work / "vae_phase1"
    if args.reuse_phase1 and p1.exists():
        prev = json.loads((run.work / "autoencoder_phase1_log.json").read_text())
        log.data["autoencoder"] = prev["autoencoder"]
        run.credit(prev["seconds"])
        log.log("events", stage="autoencoder phase 1 reused", path=str(p1))
        return AutoencoderKL.from_pretrained(p1)
    vae = train_autoencoder(imgs, val_imgs, steps=args.ae_steps, batch=args.ae_batch, lr=args.ae_lr,
                            kl_weight=args.kl_weight, seed=args.seed, log=log, crop=args.ae_crop,
                            edge_weight=args.ae_edge_weight)
    vae.save_pretrained(p1, safe_serialization=True)
    (run.work / "autoencoder_phase1_log.json").write_text(json.dumps(
        {"autoencoder": log.data["autoencoder"], "seconds": time.time() - run.t0}))
    return vae


def _train_autoencoder(run: _Run, imgs, val_imgs) -> _Autoencoder:
    """Phases 1 and 2, then the latent scaling factor (1 / std of sampled latents); cached in <out>.work."""
    import torch

    args, log = run.args, run.log
    vae = _phase1_autoencoder(run, imgs, val_imgs)
    vae = train_autoencoder(imgs, val_imgs, steps=args.ae_full_steps, batch=args.ae_full_batch,
                            lr=args.ae_full_lr, kl_weight=args.kl_weight, seed=args.seed + 100, log=log,
                            crop=IMAGE_SIZE, vae=vae.train(), phase="full", step0=args.ae_steps, warmup=20,
                            final_frac=0.0, edge_weight=args.ae_edge_weight)
    val_psnr = autoencoder_psnr(vae, to_tensor(val_imgs))
    lat_mean, lat_std = encode_all(vae, imgs)
    g = torch.Generator().manual_seed(args.seed + 5)
    z = lat_mean[:4096] + lat_std[:4096] * torch.randn(lat_mean[:4096].shape, generator=g)
    scaling = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=scaling)
    t_ae = time.time() - run.t0
    log.data["autoencoder_summary"] = {"val_psnr_db": round(val_psnr, 2), "scaling_factor": scaling,
                                       "latent_std_mean": float(lat_std.mean()), "minutes": round(t_ae / 60, 2),
                                       "steps": args.ae_steps + args.ae_full_steps}
    log.log("events", stage="autoencoder done", val_psnr=round(val_psnr, 2), scaling_factor=round(scaling, 4))
    vae.save_pretrained(run.work / "vae", safe_serialization=True)
    torch.save({"mean": lat_mean, "std": lat_std}, run.work / "latents.pt")
    (run.work / "autoencoder_log.json").write_text(json.dumps(
        {"autoencoder": log.data["autoencoder"], "autoencoder_summary": log.data["autoencoder_summary"]}))
    log.save()
    return _Autoencoder(vae, lat_mean, lat_std, scaling, t_ae)


def _cached_autoencoder(run: _Run, imgs) -> _Autoencoder:
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(run.work / "vae").eval()
    prev = json.loads((run.work / "autoencoder_log.json").read_text())
    run.log.data.update(prev)
    t_ae = 60 * prev["autoencoder_summary"]["minutes"]
    scaling = float(vae.config.scaling_factor)
    if (run.work / "latents.pt").exists():  # the cached encoding of the same images by the same vae
        lat = torch.load(run.work / "latents.pt")
        lat_mean, lat_std = lat["mean"], lat["std"]
    else:
        lat_mean, lat_std = encode_all(vae, imgs)
    run.log.log("events", stage="autoencoder loaded", path=str(run.work / "vae"), scaling_factor=round(scaling, 4))
    run.credit(t_ae)  # report the total time of both stages
    return _Autoencoder(vae, lat_mean, lat_std, scaling, t_ae)


# ----------------------------------------------------------------------------- stages 2 + 3

def _checkpointer(run: _Run, phase: int):
    """``checkpoint(step, ema_unet, ema_text)`` for the last phase with --checkpoint-every, else None."""
    args = run.args
    last_phase = 3 if args.unet_steps3 > 0 else 2 if args.unet_steps2 > 0 else 1
    if not args.checkpoint_every or phase != last_phase:
        return None

    def save(step, ema_unet, ema_text):
        ema_unet.save_pretrained(run.work / f"ckpt_{step}" / "unet")
        ema_text.save_pretrained(run.work / f"ckpt_{step}" / "text_encoder")
        run.log.log("events", stage="checkpoint", step=step, path=str(run.work / f"ckpt_{step}"))
    return save


def _diffusion_phase1(run: _Run, ae: _Autoencoder, caps, tokenizer):
    """(unet, text, stopped early) after phase 1: from --resume-from, reused, or trained."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    args, log, d1 = run.args, run.log, run.work / "diffusion_phase1"
    if args.resume_from is not None:
        return (UNet2DConditionModel.from_pretrained(args.resume_from / "unet"),
                CLIPTextModel.from_pretrained(args.resume_from / "text_encoder"), False)
    if args.reuse_diffusion_phase1 and d1.exists():  # identical to retraining phase 1 (same seed and steps)
        prev = json.loads((d1 / "log.json").read_text())
        log.data["diffusion"] = prev["diffusion"]
        run.credit(prev["seconds"])
        log.log("events", stage="diffusion phase 1 reused", path=str(d1))
        return (UNet2DConditionModel.from_pretrained(d1 / "unet"),
                CLIPTextModel.from_pretrained(d1 / "text_encoder"), prev["stopped_early"])
    t1 = time.time()
    unet, text, early = train_diffusion(ae.lat_mean, ae.lat_std, caps, tokenizer, ae.scaling, steps=args.unet_steps,
                                        batch=args.unet_batch, lr=args.unet_lr, seed=args.seed, log=log,
                                        deadline=run.deadline, checkpoint=_checkpointer(run, 1),
                                        ema_decay=args.ema_decay, checkpoint_every=args.checkpoint_every)
    unet.save_pretrained(d1 / "unet")
    text.save_pretrained(d1 / "text_encoder")
    (d1 / "log.json").write_text(json.dumps({"diffusion": log.data["diffusion"], "seconds": time.time() - t1,
                                             "stopped_early": early}))
    return unet, text, early


def _diffusion_stage(run: _Run, ae: _Autoencoder, caps, tok_dir: Path):
    """Phase 1, then the optional phases 2 and 3, each from the previous one's EMA weights with a fresh
    optimizer and schedule; returns (unet, text, stopped early)."""
    from transformers import CLIPTokenizer

    args = run.args
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    unet, text, early = _diffusion_phase1(run, ae, caps, tokenizer)
    phases = [(2, args.unet_steps2 if args.resume_from is None else 0, args.unet_lr2, args.unet_steps),
              (3, args.unet_steps3, args.unet_lr3, args.unet_steps + args.unet_steps2)]
    for phase, steps, lr, step0 in phases:
        if steps <= 0:
            continue
        unet, text, stopped = train_diffusion(
            ae.lat_mean, ae.lat_std, caps, tokenizer, ae.scaling, steps=steps, batch=args.unet_batch, lr=lr,
            seed=args.seed + 100 * phase, log=run.log, deadline=run.deadline, unet=unet.train(),
            text=text.train(), step0=step0, warmup=50, phase=str(phase), checkpoint=_checkpointer(run, phase),
            ema_decay=args.ema_decay, checkpoint_every=args.checkpoint_every)
        early = early or stopped
    return unet, text, early


# ----------------------------------------------------------------------------- save

def _save(run: _Run, ae: _Autoencoder, unet, text, tok_dir: Path, early: bool) -> None:
    args, log = run.args, run.log
    t_all = time.time() - run.t0
    save_pipeline(args.out, ae.vae, text, tok_dir, unet, args.fp16)
    shutil.rmtree(tok_dir)
    if not args.keep_work:
        shutil.rmtree(run.work, ignore_errors=True)
    log.data["summary"] = {"total_minutes": round(t_all / 60, 2), "autoencoder_minutes": round(ae.seconds / 60, 2),
                           "diffusion_minutes": round((t_all - ae.seconds) / 60, 2), "stopped_early": early,
                           "size_bytes": folder_size(args.out), "threads": args.threads}
    log.log("events", stage="saved", out=str(args.out), **log.data["summary"])
    log.save()
    if args.grid:
        from .evaluate import load_pipeline, sample_grid

        sample_grid(load_pipeline(args.out), args.grid, guidance=args.guidance)
        log.log("events", stage="grid", path=str(args.grid))


def save_pipeline(out: Path, vae, text, tokenizer_dir: Path, unet, fp16: bool) -> None:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir), unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    if fp16:
        pipe.to(torch.float16)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; add the classic CLIP files (vocab.json + merges.txt) that
    # the torch-free runtime reads, with the plain CLIP tokenizer_config.json
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / "tokenizer" / name)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


if __name__ == "__main__":
    main()
