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

import hashlib
import importlib
import inspect
import json
from pathlib import Path
from typing import Any

from ldm_runtime.errors import UserError

from ..model import (Conditioning, Guidance, Latent, LoadedModel, Modules, Source, Text, hash_paths,
                     sample_size)

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
    """Give custom modules the small diffusers-like call surface the exporter and reference loop use."""
    import torch

    class UNetAdapter(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=False, **_):
            t = timestep.float().reshape(-1).expand(sample.shape[0])
            args = (sample, t) if encoder_hidden_states is None else (sample, t, encoder_hidden_states)
            return (self.m(*args),)

    class TextAdapter(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, *_, **__):
            out = self.m(input_ids)
            return out if isinstance(out, tuple) else (out,)

    return UNetAdapter, TextAdapter


def _read_description(path: Path, overrides: dict[str, str | None] | None) -> dict:
    try:
        desc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the custom model description {path}: {e}") from e
    if not isinstance(desc, dict):
        raise UserError(f"{path}: a custom model description is a JSON object; got {type(desc).__name__}")
    desc.update({k: v for k, v in (overrides or {}).items() if v})
    missing = [k for k in REQUIRED if k not in desc]
    if missing:
        raise UserError(f"{path}: the custom model description lacks {', '.join(missing)}")
    return desc


def _text(path: Path, desc: dict, adapter) -> tuple[Any, Text]:
    """The wrapped text encoder and its facts, probed with one forward pass."""
    import torch

    if "tokenizer" not in desc:
        raise UserError(f"{path}: a text encoder needs a 'tokenizer' folder")
    tokenizer_dir = (Path(path).parent / desc["tokenizer"]).resolve()
    raw = _build(desc["text_encoder"], "text encoder")
    with torch.no_grad():
        probe = raw(torch.zeros(1, int(desc.get("max_length", 77)), dtype=torch.long))
    probe = probe[0] if isinstance(probe, tuple) else probe
    vocab_file = tokenizer_dir / "vocab.json"
    vocab = json.loads(vocab_file.read_text()) if vocab_file.exists() else {}
    text = Text(encoder="clip", tokenizer_dir=tokenizer_dir, max_length=int(probe.shape[1]),
                hidden_size=int(probe.shape[2]), vocab_size=len(vocab) or 1)
    return adapter(raw), text


def _source_hash(path: Path, desc: dict, text: Text | None) -> str:
    """sha256 of what makes the model: the description, the tokenizer folder, each factory's name and the
    source file of its module (so changing ``--unet`` or the factory's code changes the model's hash)."""
    files = [path] + ([text.tokenizer_dir] if text else [])
    specs = []
    for key in FACTORY_KEYS:
        if desc.get(key):
            fn = import_factory(desc[key])
            specs.append(f"{key}={desc[key]}")
            source = inspect.getsourcefile(fn)
            if source is not None:
                files.append(Path(source))
    h = hashlib.sha256(hash_paths(files).encode())
    h.update("\n".join(specs).encode())
    return h.hexdigest()


def load_custom(path: Path, overrides: dict[str, str | None] | None = None) -> LoadedModel:
    """Load a custom model description (and/or factory overrides) into a LoadedModel."""
    desc = _read_description(path, overrides)
    UNetAdapter, TextAdapter = _adapters()
    c = int(desc["latent_channels"])
    text_encoder, text = _text(path, desc, TextAdapter) if "text_encoder" in desc else (None, None)
    modules = Modules(unet=UNetAdapter(_build(desc["unet"], "unet")), decoder=_build(desc["decoder"], "decoder"),
                      encoder=_build(desc["encoder"], "encoder") if desc.get("encoder") else None,
                      text_encoder=text_encoder)
    return LoadedModel(
        family="text-to-image" if text else "unconditional",
        source=Source(Path(path), "custom", _source_hash(Path(path), desc, text)), modules=modules,
        scheduler_config={k: v for k, v in dict(desc["scheduler"]).items() if k != "_class_name"},
        scheduler_class=dict(desc["scheduler"]).get("_class_name", "DDIMScheduler"), autoencoder_kind="kl",
        latent=Latent(channels=c, downsample_factor=int(desc["downsample_factor"]),
                      scaling_factor=float(desc["scaling_factor"])),
        conditioning=Conditioning("text", text=text) if text else Conditioning("none"),
        guidance=Guidance("greater_than_one" if text else "never", negative_prompt=bool(text)),
        unet_in_channels=c, unet_downsampling=int(desc["unet_downsampling"]),
        sample_size=sample_size(int(desc["sample_size"])))
