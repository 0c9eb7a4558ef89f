"""Stages 2 and 3 of the demo model's training: text encoder and UNet, jointly (see train.py)."""

from __future__ import annotations

import time

import numpy as np

from . import SCHEDULER
from .train_common import MAX_LENGTH, TEXT_CONFIG, UNET_CONFIG, Logger, adamw, lr_at


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


def _models(tokenizer, unet, text):
    """(unet, text, [their EMA copies]): new models when ``unet`` is None, else a previous phase's, trainable."""
    import copy

    from diffusers import UNet2DConditionModel

    if unet is None:
        unet = UNet2DConditionModel(**UNET_CONFIG)
        text = make_text_encoder(tokenizer)
    for m in (unet, text):  # a previous phase hands over its EMA copies, which have gradients switched off
        m.requires_grad_(True)
    ema = [copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()]
    for m in ema:
        m.requires_grad_(False)
    return unet, text, ema


def _caption_ids(tokenizer, captions: list[str]):
    """Each caption's index into the distinct captions, their token ids, and the empty caption's ids."""
    import torch

    uniq = sorted(set(captions))
    index = {c: i for i, c in enumerate(uniq)}
    cap_ids = torch.tensor([index[c] for c in captions])
    return cap_ids, tokenize(tokenizer, uniq), tokenize(tokenizer, [""])[0]


def train_diffusion(lat_mean, lat_std, captions: list[str], tokenizer, scaling: float, *, steps: int, batch: int,
                    lr: float, seed: int, log: Logger, p_uncond: float = 0.1, snr_gamma: float = 5.0,
                    ema_decay: float = 0.995, deadline: float | None = None, unet=None, text=None,
                    step0: int = 0, warmup: int = 100, phase: str = "1", checkpoint=None, checkpoint_every: int = 0):
    """One diffusion phase; returns the EMA (unet, text) and whether the deadline stopped it.

    ``checkpoint(step, ema_unet, ema_text)`` is called every ``checkpoint_every`` steps (0: never).
    """
    import torch
    from diffusers import DDPMScheduler

    torch.manual_seed(seed + 10)
    unet, text, ema = _models(tokenizer, unet, text)
    params = list(unet.parameters()) + list(text.parameters())
    opt = adamw(params, lr=lr, weight_decay=0.01)
    ema_params = list(ema[0].parameters()) + list(ema[1].parameters())
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if k not in ("set_alpha_to_one", "steps_offset")})
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    cap_ids, uniq_ids, empty_ids = _caption_ids(tokenizer, captions)
    rng = np.random.default_rng(seed + 11)
    gen = torch.Generator().manual_seed(seed + 12)
    unet.train()
    text.train()
    stopped_early = False
    t_start = time.time()
    for step in range(steps):
        cur_lr = lr_at(step, steps, lr, warmup=warmup, final_frac=0.1)
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
