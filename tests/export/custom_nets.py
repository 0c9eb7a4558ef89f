"""Factories of tiny custom modules (neither diffusers nor CompVis), for the custom-model tests."""

from __future__ import annotations

import torch

C, H, L = 4, 16, 16


class TinyUNet(torch.nn.Module):
    """sample, timestep, text embeddings → epsilon; a real (small) conditional network."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Conv2d(C, 32, 3, padding=1)
        self.time = torch.nn.Linear(1, 32)
        self.ctx = torch.nn.Linear(H, 32)
        self.down = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose2d(32, 32, 2, stride=2)
        self.out = torch.nn.Conv2d(32, C, 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states):
        h = self.inp(sample) + self.time(timestep[:, None] / 1000)[:, :, None, None]
        h = h + self.ctx(encoder_hidden_states.mean(1))[:, :, None, None]
        h = torch.nn.functional.silu(self.up(torch.nn.functional.silu(self.down(h)))) + h
        return self.out(h)


class TinyText(torch.nn.Module):
    def __init__(self, vocab: int = 700):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, H)
        self.mix = torch.nn.Linear(H, H)

    def forward(self, input_ids):
        return torch.tanh(self.mix(self.emb(input_ids)))


def _seeded(cls):
    torch.manual_seed(0)
    return cls()


def make_unet():
    return _seeded(TinyUNet)


def make_text_encoder():
    return _seeded(TinyText)


def make_decoder():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(C, 3, 3, padding=1),
                               torch.nn.Tanh())


def make_encoder():
    torch.manual_seed(2)
    return torch.nn.Sequential(torch.nn.Conv2d(3, C, 3, stride=2, padding=1))


def not_a_module():
    return 42
