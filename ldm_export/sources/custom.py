"""Components from factories: models that are neither diffusers nor CompVis.

``ldm-export build model.json`` where ``model.json`` names a factory per component
(``"pkg.module:function"``, called with no arguments, returning a ``torch.nn.Module``)
and the facts the exporter cannot read from plain modules::

    {
      "unet": "mypkg.nets:make_unet",
      "decoder": "mypkg.nets:make_decoder",
      "encoder": "mypkg.nets:make_encoder",            (optional)
      "text_encoder": "mypkg.nets:make_text_encoder",  (optional; needs "tokenizer")
      "tokenizer": "path/to/clip-tokenizer-folder",     (relative to model.json)
      "scheduler": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, …},  (diffusers DDIM keys)
      "latent_channels": 4, "downsample_factor": 8, "scaling_factor": 0.18215,
      "unet_downsampling": 4, "sample_size": 32       (latent size the UNet was trained at)
    }

The same factories can be given on the command line (``--unet``, ``--decoder``,
``--encoder``, ``--text-encoder``), overriding the file. Call signatures:

- ``unet(sample: f32[B, C, h, w], timestep: f32[B][, encoder_hidden_states: f32[B, L, H]]) -> f32[B, C, h, w]``
  (the third argument only when there is a text encoder);
- ``decoder(latent: f32[B, C, h, w]) -> f32[B, 3, H, W]`` in [-1, 1]; the latent is already divided by
  ``scaling_factor``;
- ``encoder(image: f32[B, 3, H, W]) -> f32[B, C, h, w]``, the latent mean before scaling;
- ``text_encoder(input_ids: i64[B, L]) -> f32[B, L, H]`` (a tuple's first element is used).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

from ldm_runtime.errors import UserError

FACTORY_KEYS = ("unet", "decoder", "encoder", "text_encoder")
REQUIRED = ("unet", "decoder", "scheduler", "latent_channels", "downsample_factor", "scaling_factor",
            "unet_downsampling", "sample_size")


def import_factory(spec: str):
    """'pkg.module:function' → the function, with a one-line error when it cannot be found."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"factory '{spec}' is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"cannot import {module_name} for factory '{spec}': {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{module_name} has no callable '{attr}' (factory '{spec}')")
    return fn


def _build(spec: str, what: str):
    import torch

    module = import_factory(spec)()
    if not isinstance(module, torch.nn.Module):
        raise UserError(f"the {what} factory '{spec}' returned {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


def _adapters():
    """Give custom modules the small diffusers-like surface the exporter and reference loop use."""
    import torch

    class UNetAdapter(torch.nn.Module):
        def __init__(self, m, config):
            super().__init__()
            self.m, self.config = m, config

        def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=False, **_):
            t = timestep.float().reshape(-1).expand(sample.shape[0])
            args = (sample, t) if encoder_hidden_states is None else (sample, t, encoder_hidden_states)
            return (self.m(*args),)

    class TextAdapter(torch.nn.Module):
        def __init__(self, m, config):
            super().__init__()
            self.m, self.config = m, config

        def forward(self, input_ids, *_, **__):
            out = self.m(input_ids)
            return out if isinstance(out, tuple) else (out,)

    return UNetAdapter, TextAdapter


def load_custom(path: Path, overrides: dict[str, str | None] | None = None):
    """Load a custom model description (and/or factory overrides) into a LoadedModel."""
    import torch

    from ..loading import LoadedModel, hash_paths

    try:
        desc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the custom model description {path}: {e}") from e
    desc.update({k: v for k, v in (overrides or {}).items() if v})
    missing = [k for k in REQUIRED if k not in desc]
    if missing:
        raise UserError(f"{path}: the custom model description lacks {', '.join(missing)}")
    UNetAdapter, TextAdapter = _adapters()
    text = "text_encoder" in desc
    c = int(desc["latent_channels"])
    unet = UNetAdapter(_build(desc["unet"], "unet"),
                       SimpleNamespace(in_channels=c, sample_size=int(desc["sample_size"]), block_out_channels=None))
    text_encoder, tokenizer_dir, conditioning = None, None, {"kind": "none"}
    if text:
        if "tokenizer" not in desc:
            raise UserError(f"{path}: a text encoder needs a 'tokenizer' folder")
        tokenizer_dir = (Path(path).parent / desc["tokenizer"]).resolve()
        raw = _build(desc["text_encoder"], "text encoder")
        with torch.no_grad():
            probe = raw(torch.zeros(1, int(desc.get("max_length", 77)), dtype=torch.long))
        probe = probe[0] if isinstance(probe, tuple) else probe
        vocab = json.loads((tokenizer_dir / "vocab.json").read_text()) if (tokenizer_dir / "vocab.json").exists() else {}
        text_encoder = TextAdapter(raw, SimpleNamespace(max_position_embeddings=probe.shape[1],
                                                        hidden_size=probe.shape[2], vocab_size=len(vocab) or 1))
        conditioning = {"kind": "text", "encoder": "clip"}
    sources = [Path(path)] + ([tokenizer_dir] if tokenizer_dir else [])
    return LoadedModel(
        family="text-to-image" if text else "unconditional", source=Path(path), source_format="custom",
        source_sha256=hash_paths(sources), unet=unet, vae=None, scheduler_config=dict(desc["scheduler"]),
        autoencoder_kind="kl", conditioning=conditioning, text_encoder=text_encoder, tokenizer_dir=tokenizer_dir,
        guidance={"rule": "greater_than_one" if text else "never", "negative_prompt": text},
        decoder=_build(desc["decoder"], "decoder"),
        encoder=_build(desc["encoder"], "encoder") if desc.get("encoder") else None,
        _custom={k: desc[k] for k in ("downsample_factor", "scaling_factor", "unet_downsampling")},
    )
