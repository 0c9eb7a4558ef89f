"""Stage 1 of the demo model's training: the KL autoencoder (see train.py)."""

from __future__ import annotations


import numpy as np

from .train_common import VAE_CONFIG, Logger, adamw, lr_at, psnr, to_tensor


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
    opt = adamw(vae.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    x_val = to_tensor(val_imgs)
    vae.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=warmup, final_frac=final_frac)
        x = to_tensor(_random_crops(train_imgs, rng.integers(0, len(train_imgs), batch), crop, rng))
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
    """PSNR in dB of the autoencoder's reconstructions (posterior mode) of ``x_val``, on [0, 1]."""
    import torch

    vae.eval()
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(x_val[i:i + batch]).latent_dist.mode()).sample
                         for i in range(0, len(x_val), batch)])
    return psnr(rec, x_val)


def encode_all(vae, images: np.ndarray, batch: int = 256):
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            d = vae.encode(to_tensor(images[i:i + batch])).latent_dist
            means.append(d.mean)
            stds.append(d.std)
    return torch.cat(means), torch.cat(stds)
