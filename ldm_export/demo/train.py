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
import math
import shutil
import time
from pathlib import Path

import numpy as np

from . import GUIDANCE, SCHEDULER, bpe, shapes

IMAGE_SIZE = 32
MAX_LENGTH = 16
LATENT_CHANNELS = 8  # 8x8x8 latents: 4 channels did not reach 30 dB PSNR within the CPU budget

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1, norm_num_groups=16, sample_size=IMAGE_SIZE, mid_block_add_attention=False,
)

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
    # transformer blocks (self- + cross-attention) at the 4 x 4 level and in the mid block only: at 8 x 8
    # (64 tokens) they took half of a CPU training step (docs/demo_model.md)
    block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
    attention_head_dim=4, norm_num_groups=8,
)

TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                   projection_dim=64)


# ----------------------------------------------------------------------------- tokenizer

def write_tokenizer(folder: Path, words: list[str], model_max_length: int = MAX_LENGTH) -> None:
    """A CLIP-format BPE tokenizer whose merges make every grammar word a single token.

    Greedy BPE on the word list (as CLIP's BPE was trained, on a tiny corpus):
    the 512 byte-level symbols (plain and end-of-word ``</w>``), then merges until
    no word has two symbols left, then ``<|startoftext|>`` and ``<|endoftext|>``.
    Text outside the grammar falls back to sub-word and byte tokens.
    """
    bpe.write_clip_tokenizer(folder, words, model_max_length=model_max_length)


# ----------------------------------------------------------------------------- helpers

class Logger:
    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict = {"autoencoder": [], "diffusion": [], "events": []}
        self.t0 = time.time()

    def log(self, section: str, **kw) -> None:
        kw["time_s"] = round(time.time() - self.t0, 1)
        self.data[section].append(kw)
        if section == "events":
            print(f"[{kw['time_s']:7.1f}s] " + " ".join(f"{k}={v}" for k, v in kw.items() if k != "time_s"), flush=True)

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1))


def _lr(step: int, total: int, base: float, warmup: int, final_frac: float = 0.1) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def _adamw(params, *, lr: float, weight_decay: float):
    """AdamW with the fused kernel: one call per step instead of a dozen small ops per tensor.

    The models are small (about 300 weight tensors), so per-tensor overhead is a tenth of a CPU step.
    """
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), fused=True)


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def psnr(a, b) -> float:
    """PSNR in dB of [-1, 1] tensors, measured on [0, 1]."""
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# ----------------------------------------------------------------------------- stage 1: autoencoder

def _random_crops(imgs: np.ndarray, idx: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    if crop >= imgs.shape[1]:
        return imgs[idx]
    off = rng.integers(0, imgs.shape[1] - crop + 1, size=(len(idx), 2))
    return np.stack([imgs[i, y:y + crop, x:x + crop] for i, (y, x) in zip(idx, off)])


def edge_weights(x, weight: float):
    """Per-pixel loss weights ``1 + weight`` within one pixel of a colour edge of ``x`` (N, 3, H, W), else 1.

    A small shape differs from its neighbours in the shape grammar (a circle from a square) only in a few
    edge and corner pixels, which a plain per-pixel loss counts no more than flat background.
    """
    import torch

    with torch.no_grad():
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1, keepdim=True)
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True)
        e = torch.zeros_like(x[:, :1])
        e[..., :, 1:] += dx
        e[..., :, :-1] += dx
        e[..., 1:, :] += dy
        e[..., :-1, :] += dy
        edge = torch.nn.functional.max_pool2d((e > 0.15).float(), 3, 1, 1)
        return 1.0 + weight * edge


def train_autoencoder(train_imgs: np.ndarray, val_imgs: np.ndarray, *, steps: int, batch: int, lr: float,
                      kl_weight: float, seed: int, log: Logger, crop: int = 16, vae=None, phase: str = "crops",
                      step0: int = 0, warmup: int = 50, final_frac: float = 0.05, edge_weight: float = 0.0):
    """One phase of autoencoder training (fresh Adam state; RNG streams derived from ``seed``).

    Phase "crops" (from scratch): random ``crop`` x ``crop`` crops -- the autoencoder is fully
    convolutional (no mid-block attention), so crops train nearly the same function at a quarter
    of the cost. Phase "full": full images at a low learning rate, which adapts the GroupNorm
    statistics to full-size inputs (crops alone leave ~2 dB on the table). PSNR is always
    measured on full held-out images.
    """
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    if vae is None:
        vae = AutoencoderKL(**VAE_CONFIG)
    opt = _adamw(vae.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    x_val = _to_tensor(val_imgs)
    vae.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, warmup=warmup, final_frac=final_frac)
        x = _to_tensor(_random_crops(train_imgs, rng.integers(0, len(train_imgs), batch), crop, rng))
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        err = rec - x
        w = edge_weights(x, edge_weight) if edge_weight else 1.0
        rec_loss = (w * (err.abs() + err.pow(2))).sum(dim=(1, 2, 3)).mean()  # LDM convention: summed over pixels
        kl = post.kl().mean()
        loss = rec_loss + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 100.0, foreach=True)
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            row = dict(step=step0 + step, phase=phase, loss=round(loss.item(), 3), rec=round(rec_loss.item(), 3),
                       kl=round(kl.item(), 2), psnr_train=round(psnr(rec.detach(), x), 2))
            if step % 500 == 0 or step == steps - 1:
                row["psnr_val"] = round(autoencoder_psnr(vae, x_val), 2)
                vae.train()
                log.log("events", stage="autoencoder", **row)
            log.log("autoencoder", **row)
            log.save()
    vae.eval()
    return vae


def autoencoder_psnr(vae, x_val, batch: int = 256) -> float:
    import torch

    vae.eval()
    errs = []
    with torch.no_grad():
        for i in range(0, len(x_val), batch):
            x = x_val[i:i + batch]
            rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
            errs.append(((rec.clamp(-1, 1) - x) / 2).pow(2).mean(dim=(1, 2, 3)))
    mse = torch.cat(errs).mean().item()
    return 10 * math.log10(1.0 / mse)


def encode_all(vae, images: np.ndarray, batch: int = 256):
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            d = vae.encode(_to_tensor(images[i:i + batch])).latent_dist
            means.append(d.mean)
            stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


# ----------------------------------------------------------------------------- stage 2+3: text encoder + unet

def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    v = len(tokenizer)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=v, max_position_embeddings=MAX_LENGTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG))


def tokenize(tokenizer, captions: list[str]):
    import torch

    return torch.tensor(tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                                  truncation=True).input_ids)


def train_diffusion(lat_mean, lat_std, captions: list[str], tokenizer, scaling: float, *, steps: int, batch: int,
                    lr: float, seed: int, log: Logger, p_uncond: float = 0.1, snr_gamma: float = 5.0,
                    ema_decay: float = 0.995, deadline: float | None = None, unet=None, text=None,
                    step0: int = 0, warmup: int = 100, phase: str = "1", checkpoint=None, checkpoint_every: int = 0):
    """One diffusion phase; returns the EMA (unet, text) and whether the deadline stopped it.

    ``checkpoint(step, ema_unet, ema_text)`` is called every ``checkpoint_every`` steps (0: never).
    """
    import copy

    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed + 10)
    if unet is None:
        unet = UNet2DConditionModel(**UNET_CONFIG)
        text = make_text_encoder(tokenizer)
    for m in (unet, text):  # a previous phase hands over its EMA copies, which have gradients switched off
        m.requires_grad_(True)
    ema = [copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()]
    for m in ema:
        m.requires_grad_(False)
    params = list(unet.parameters()) + list(text.parameters())
    opt = _adamw(params, lr=lr, weight_decay=0.01)
    ema_params = list(ema[0].parameters()) + list(ema[1].parameters())
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if k not in ("set_alpha_to_one", "steps_offset")})
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    uniq = sorted(set(captions))
    index = {c: i for i, c in enumerate(uniq)}
    cap_ids = torch.tensor([index[c] for c in captions])
    uniq_ids = tokenize(tokenizer, uniq)
    empty_ids = tokenize(tokenizer, [""])[0]
    rng = np.random.default_rng(seed + 11)
    gen = torch.Generator().manual_seed(seed + 12)
    unet.train()
    text.train()
    stopped_early = False
    t_start = time.time()
    for step in range(steps):
        cur_lr = _lr(step, steps, lr, warmup=warmup, final_frac=0.1)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        idx = torch.from_numpy(rng.integers(0, len(cap_ids), batch))
        ids = uniq_ids[cap_ids[idx]].clone()
        drop = torch.from_numpy(rng.random(batch) < p_uncond)
        ids[drop] = empty_ids
        z = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)) * scaling
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        zt = sched.add_noise(z, noise, t)
        enc = text(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=enc).sample
        w = torch.clamp(snr[t], max=snr_gamma) / snr[t]  # min-SNR-gamma weighting for epsilon prediction
        mse = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (w * mse).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - d)  # ema <- d * ema + (1 - d) * weights, in one call
        if step % 25 == 0 or step == steps - 1:
            row = dict(step=step0 + step, phase=phase, loss=round(loss.item(), 4), mse=round(mse.mean().item(), 4),
                       lr=round(cur_lr, 6))
            log.log("diffusion", **row)
            if step % 250 == 0 or step == steps - 1:
                el = time.time() - t_start
                log.log("events", stage="diffusion", **row, s_per_step=round(el / (step + 1), 3))
            log.save()
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step < steps - 1:
            checkpoint(step0 + step + 1, ema[0], ema[1])
        if deadline is not None and time.time() > deadline:
            stopped_early = True
            log.log("events", stage="diffusion", warning=f"time cap hit: stopped after {step + 1} of {steps} steps")
            break
    for e, m in zip(ema, (unet, text)):  # copy buffers (none expected) and make eval copies
        for be, bm in zip(e.buffers(), m.buffers()):
            be.copy_(bm)
    return ema[0], ema[1], stopped_early


# ----------------------------------------------------------------------------- save

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


def main(argv: list[str] | None = None) -> None:
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

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    deadline = t0 + 60 * args.minutes if args.minutes else None
    log = Logger(args.log or args.out.parent / "training_log.json")
    log.data["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    log.data["configs"] = {"vae": VAE_CONFIG, "unet": UNET_CONFIG, "text": TEXT_CONFIG, "scheduler": SCHEDULER}

    imgs, caps, _ = shapes.make_dataset(args.n_train, seed=args.seed)
    val_imgs, _, _ = shapes.make_dataset(args.n_val, seed=args.seed + 1_000_003)
    log.log("events", stage="data", n_train=len(imgs), n_val=len(val_imgs), unique_captions=len(set(caps)))

    # stage 1 is cached in <out>.work/vae so that the stages can run as separate invocations
    work = args.out.parent / (args.out.name + ".work")
    ae_log = work / "autoencoder_log.json"
    if args.resume_from is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.resume_from / "vae").eval()
        prev_log = json.loads((args.resume_from.parent / "training_log.json").read_text()) \
            if (args.resume_from.parent / "training_log.json").exists() else {}
        for key in ("autoencoder", "autoencoder_summary", "diffusion"):
            if key in prev_log:
                log.data[key] = prev_log[key]
        prev_summary = prev_log.get("summary", {})
        t_ae = 60 * prev_summary.get("autoencoder_minutes", 0.0)
        t0 -= 60 * prev_summary.get("total_minutes", 0.0)  # report the total time of all stages
        scaling = float(vae.config.scaling_factor)
        lat_mean, lat_std = encode_all(vae, imgs)
        log.log("events", stage="resumed", path=str(args.resume_from), previous_minutes=prev_summary.get("total_minutes"))
    elif args.stage in ("all", "ae") or not (work / "vae").exists():
        p1 = work / "vae_phase1"
        if args.reuse_phase1 and p1.exists():  # identical to retraining phase 1 (same seed and steps)
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(p1)
            prev = json.loads((work / "autoencoder_phase1_log.json").read_text())
            log.data["autoencoder"] = prev["autoencoder"]
            t0 -= prev["seconds"]
            log.log("events", stage="autoencoder phase 1 reused", path=str(p1))
        else:
            vae = train_autoencoder(imgs, val_imgs, steps=args.ae_steps, batch=args.ae_batch, lr=args.ae_lr,
                                    kl_weight=args.kl_weight, seed=args.seed, log=log, crop=args.ae_crop,
                                    edge_weight=args.ae_edge_weight)
            vae.save_pretrained(p1, safe_serialization=True)
            (work / "autoencoder_phase1_log.json").write_text(json.dumps(
                {"autoencoder": log.data["autoencoder"], "seconds": time.time() - t0}))
        vae = train_autoencoder(imgs, val_imgs, steps=args.ae_full_steps, batch=args.ae_full_batch,
                                lr=args.ae_full_lr, kl_weight=args.kl_weight, seed=args.seed + 100, log=log,
                                crop=IMAGE_SIZE, vae=vae.train(), phase="full", step0=args.ae_steps, warmup=20,
                                final_frac=0.0, edge_weight=args.ae_edge_weight)
        val_psnr = autoencoder_psnr(vae, _to_tensor(val_imgs))
        lat_mean, lat_std = encode_all(vae, imgs)
        g = torch.Generator().manual_seed(args.seed + 5)
        z = lat_mean[:4096] + lat_std[:4096] * torch.randn(lat_mean[:4096].shape, generator=g)
        scaling = float(1.0 / z.std())
        vae.register_to_config(scaling_factor=scaling)
        t_ae = time.time() - t0
        log.data["autoencoder_summary"] = {"val_psnr_db": round(val_psnr, 2), "scaling_factor": scaling,
                                           "latent_std_mean": float(lat_std.mean()), "minutes": round(t_ae / 60, 2),
                                           "steps": args.ae_steps + args.ae_full_steps}
        log.log("events", stage="autoencoder done", val_psnr=round(val_psnr, 2), scaling_factor=round(scaling, 4))
        vae.save_pretrained(work / "vae", safe_serialization=True)
        torch.save({"mean": lat_mean, "std": lat_std}, work / "latents.pt")
        ae_log.write_text(json.dumps({"autoencoder": log.data["autoencoder"],
                                      "autoencoder_summary": log.data["autoencoder_summary"]}))
        log.save()
        if args.stage == "ae":
            return
    else:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(work / "vae").eval()
        prev = json.loads(ae_log.read_text())
        log.data.update(prev)
        t_ae = 60 * prev["autoencoder_summary"]["minutes"]
        scaling = float(vae.config.scaling_factor)
        if (work / "latents.pt").exists():  # the cached encoding of the same images by the same vae
            lat = torch.load(work / "latents.pt")
            lat_mean, lat_std = lat["mean"], lat["std"]
        else:
            lat_mean, lat_std = encode_all(vae, imgs)
        log.log("events", stage="autoencoder loaded", path=str(work / "vae"), scaling_factor=round(scaling, 4))
        t0 -= t_ae  # report the total time of both stages

    from transformers import CLIPTokenizer

    tok_dir = args.out.parent / (args.out.name + ".tokenizer.tmp")
    write_tokenizer(tok_dir, shapes.vocabulary())
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    d1 = work / "diffusion_phase1"
    last_phase = 3 if args.unet_steps3 > 0 else 2 if args.unet_steps2 > 0 else 1

    def checkpointer(phase: int):
        if not args.checkpoint_every or phase != last_phase:
            return None

        def save(step, ema_unet, ema_text):
            ema_unet.save_pretrained(work / f"ckpt_{step}" / "unet")
            ema_text.save_pretrained(work / f"ckpt_{step}" / "text_encoder")
            log.log("events", stage="checkpoint", step=step, path=str(work / f"ckpt_{step}"))
        return save

    if args.resume_from is not None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(args.resume_from / "unet")
        text = CLIPTextModel.from_pretrained(args.resume_from / "text_encoder")
        early = False
    elif args.reuse_diffusion_phase1 and d1.exists():  # identical to retraining phase 1 (same seed and steps)
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(d1 / "unet")
        text = CLIPTextModel.from_pretrained(d1 / "text_encoder")
        prev = json.loads((d1 / "log.json").read_text())
        log.data["diffusion"] = prev["diffusion"]
        t0 -= prev["seconds"]
        early = prev["stopped_early"]
        log.log("events", stage="diffusion phase 1 reused", path=str(d1))
    else:
        t1 = time.time()
        unet, text, early = train_diffusion(lat_mean, lat_std, caps, tokenizer, scaling, steps=args.unet_steps,
                                            batch=args.unet_batch, lr=args.unet_lr, seed=args.seed, log=log,
                                            deadline=deadline, checkpoint=checkpointer(1), ema_decay=args.ema_decay,
                                            checkpoint_every=args.checkpoint_every)
        unet.save_pretrained(d1 / "unet")
        text.save_pretrained(d1 / "text_encoder")
        (d1 / "log.json").write_text(json.dumps({"diffusion": log.data["diffusion"], "seconds": time.time() - t1,
                                                 "stopped_early": early}))
    if args.unet_steps2 > 0 and args.resume_from is None:
        # phase 2: continue from phase 1's EMA weights, fresh optimizer and schedule
        unet, text, early2 = train_diffusion(
            lat_mean, lat_std, caps, tokenizer, scaling, steps=args.unet_steps2, batch=args.unet_batch,
            lr=args.unet_lr2, seed=args.seed + 200, log=log, deadline=deadline, unet=unet.train(),
            text=text.train(), step0=args.unet_steps, warmup=50, phase="2", checkpoint=checkpointer(2),
            ema_decay=args.ema_decay,
            checkpoint_every=args.checkpoint_every)
        early = early or early2
    if args.unet_steps3 > 0:  # phase 3: the same again from phase 2's EMA weights
        unet, text, early3 = train_diffusion(
            lat_mean, lat_std, caps, tokenizer, scaling, steps=args.unet_steps3, batch=args.unet_batch,
            lr=args.unet_lr3, seed=args.seed + 300, log=log, deadline=deadline, unet=unet.train(),
            text=text.train(), step0=args.unet_steps + args.unet_steps2, warmup=50, phase="3",
            ema_decay=args.ema_decay,
            checkpoint=checkpointer(3), checkpoint_every=args.checkpoint_every)
        early = early or early3
    t_all = time.time() - t0
    save_pipeline(args.out, vae, text, tok_dir, unet, args.fp16)
    shutil.rmtree(tok_dir)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.data["summary"] = {"total_minutes": round(t_all / 60, 2), "autoencoder_minutes": round(t_ae / 60, 2),
                           "diffusion_minutes": round((t_all - t_ae) / 60, 2), "stopped_early": early,
                           "size_bytes": folder_size(args.out), "threads": args.threads}
    log.log("events", stage="saved", out=str(args.out), **log.data["summary"])
    log.save()
    if args.grid:
        from .evaluate import load_pipeline, sample_grid

        sample_grid(load_pipeline(args.out), args.grid, guidance=args.guidance)
        log.log("events", stage="grid", path=str(args.grid))


if __name__ == "__main__":
    main()
