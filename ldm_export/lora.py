"""LoRA adapters on the build side: read a file with diffusers' loader, get its low-rank factors, fuse them.

Formats: what diffusers' ``lora_state_dict`` reads — the diffusers/PEFT format (``unet.…lora_A.weight``,
``text_encoder.…``, alphas in the file's adapter metadata) and the kohya/A1111 format (``lora_unet_…``,
``lora_te_…``, ``.alpha``), which it converts to diffusers' keys.

- **UNet**: diffusers' own loader (``UNet2DConditionModel.load_lora_adapter``: PEFT layers with the file's
  ranks and alphas); ``set_adapters`` with the user's scales, ``fuse_lora``, ``unload_lora``.
- **Text encoder**: transformers 5.2x's adapter integration needs PEFT ≥ 0.22 (the registry has 0.21), so
  the factors are merged here: diffusers' key conversion and LoRA config (ranks, alphas), PEFT layers
  injected with ``peft.inject_adapter_in_model`` to read them, then ``W += scale·(alpha/r)·B·A`` and the
  original layers put back.

:func:`read_factors` gives the factors of one file per component and module (what an adapter pack ships);
:func:`fuse_adapters` merges files into a loaded model's modules before any target consumes them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldm_runtime.bundle import sha256_file
from ldm_runtime.errors import UserError

from .model import LoadedModel

ADAPTED = ("unet", "text_encoder")   # the components a LoRA may adapt


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0

    @property
    def name(self) -> str:
        return "lora_" + hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Factor:
    """One adapted weight: ``delta = scaling · (B.reshape(out, r) @ A.reshape(r, -1)).reshape(weight)``."""

    A: np.ndarray          # (r, in) or (r, in, kh, kw)
    B: np.ndarray          # (out, r) or (out, r, 1, 1)
    scaling: float         # alpha / r
    weight_shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> np.ndarray:
        d = self.B.reshape(self.B.shape[0], -1).astype(np.float64) @ self.A.reshape(self.rank, -1).astype(np.float64)
        return (self.scaling * d).astype(np.float32).reshape(self.weight_shape)


def parse_spec(text: str) -> LoraSpec:
    """``FILE[:SCALE]`` → a LoraSpec (a path containing ':' takes a scale after its last ':' only when it parses)."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale, path = float(tail), head
        except ValueError:
            pass
    if not np.isfinite(scale):
        raise UserError(f"--lora {text}: the scale must be a finite number")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--lora {text}: no LoRA file at {p}; expected a .safetensors file (diffusers or kohya format)")
    return LoraSpec(p, scale)


def _peft():
    try:
        import peft
    except ImportError as e:
        raise UserError("LoRA adapters need PEFT: pip install 'ldm-export[lora]' (or pip install peft)") from e
    return peft


def _state_dict(spec: LoraSpec):
    """The file's state dict in diffusers' keys, its kohya alphas (or None) and its adapter metadata."""
    from diffusers import StableDiffusionPipeline

    try:
        state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(str(spec.path), return_lora_metadata=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot read LoRA {spec.path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                        "expected a diffusers or kohya/A1111 LoRA .safetensors file") from e
    unknown = sorted({k.split(".")[0] for k in state} - {"unet", "text_encoder"})
    if unknown or not state:
        raise UserError(f"LoRA {spec.path.name}: keys for {', '.join(unknown) or 'nothing'}; this tool adapts the "
                        "UNet and the text encoder of Stable-Diffusion-style models only")
    return state, alphas, metadata


def _lora_layers(module) -> dict[str, object]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer)}


def _factors_of(module, adapter: str) -> dict[str, Factor]:
    out = {}
    for name, layer in _lora_layers(module).items():
        if adapter not in layer.lora_A:
            continue
        A = layer.lora_A[adapter].weight.detach().float().numpy().copy()
        B = layer.lora_B[adapter].weight.detach().float().numpy().copy()
        out[name] = Factor(A, B, float(layer.scaling[adapter]), tuple(layer.base_layer.weight.shape))
    return out


def _load_unet(unet, spec: LoraSpec, state, alphas, metadata) -> None:
    sub = {k: v for k, v in state.items() if k.startswith("unet.")}
    if sub:
        _peft()
        unet.load_lora_adapter(sub, prefix="unet", network_alphas=alphas, adapter_name=spec.name,
                               metadata=metadata)


def _inject_text(text_encoder, spec: LoraSpec, state, alphas, metadata) -> bool:
    """diffusers' text-encoder conversion and config, injected with PEFT itself; False when nothing applies."""
    from diffusers.loaders.lora_base import _create_lora_config
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.state_dict_utils import StateDictType

    peft = _peft()
    sub = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    if not sub:
        return False
    # diffusers infers the old format from a 'to_out_lora' key: say it, for files that adapt no out_proj
    old = any("_lora.down." in k or "_lora.up." in k for k in sub)
    sub = convert_state_dict_to_peft(convert_state_dict_to_diffusers(
        sub, original_type=StateDictType.DIFFUSERS_OLD if old else None))
    if not hasattr(text_encoder, "text_model"):   # transformers 5.x flattened CLIPTextModel
        sub = {k.removeprefix("text_model."): v for k, v in sub.items()}
    names = {n for n, _ in text_encoder.named_modules()}
    missing = sorted({k.split(".lora_")[0] for k in sub} - names)
    if missing:
        raise UserError(f"LoRA {spec.path.name}: the text encoder has no module {', '.join(missing[:3])}"
                        f"{' …' if len(missing) > 3 else ''}; the adapter was trained for another model")
    rank = {k: v.shape[1] for k, v in sub.items() if k.endswith("lora_B.weight")}
    if alphas is not None:
        alphas = {k.removeprefix("text_encoder."): v for k, v in alphas.items() if k.startswith("text_encoder.")}
    meta = ({k.removeprefix("text_encoder."): v for k, v in metadata.items() if k.startswith("text_encoder.")}
            if metadata else None)
    config = _create_lora_config(sub, alphas or None, meta or None, rank, is_unet=False)
    peft.inject_adapter_in_model(config, text_encoder, adapter_name=spec.name)
    result = peft.set_peft_model_state_dict(text_encoder, sub, adapter_name=spec.name)
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"LoRA {spec.path.name}: text-encoder keys that fit no layer: {result.unexpected_keys[:3]}")
    return True


def _restore_layers(module) -> None:
    """Put every PEFT layer's base layer back in its parent (the merged weights stay)."""
    for name, layer in sorted(_lora_layers(module).items(), key=lambda kv: -kv[0].count(".")):
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.base_layer)
    if not _lora_layers(module) and "peft_config" in module.__dict__:
        del module.peft_config   # set by peft.inject_adapter_in_model


def read_factors(model: LoadedModel, spec: LoraSpec) -> dict[str, dict[str, Factor]]:
    """The factors of ``spec`` by component and module name, read through the same loaders as the fuse
    (the modules are left as they were)."""
    state, alphas, metadata = _state_dict(spec)
    out: dict[str, dict[str, Factor]] = {}
    unet, text = model.modules.unet, model.modules.text_encoder
    _load_unet(unet, spec, state, alphas, metadata)
    if any(k.startswith("unet.") for k in state):
        out["unet"] = _factors_of(unet, spec.name)
        unet.delete_adapters(spec.name)
        _restore_layers(unet)
    if text is not None and _inject_text(text, spec, state, alphas, metadata):
        out["text_encoder"] = _factors_of(text, spec.name)
        _restore_layers(text)
    if any(k.startswith("text_encoder.") for k in state) and text is None:
        raise UserError(f"LoRA {spec.path.name} adapts a text encoder; this model has none")
    return out


def fuse_adapters(model: LoadedModel, specs: list[LoraSpec], report=lambda msg: None) -> list[dict]:
    """Merge every adapter of ``specs`` (at its scale) into the model's UNet and text encoder, in place;
    returns the manifest's ``adapters`` entries."""
    import torch

    unet, text = model.modules.unet, model.modules.text_encoder
    entries, loaded = [], []
    for spec in specs:
        report(f"fusing LoRA {spec.path.name} at scale {spec.scale:g}")
        state, alphas, metadata = _state_dict(spec)
        unet_mods: dict[str, Factor] = {}
        if any(k.startswith("unet.") for k in state):
            _load_unet(unet, spec, state, alphas, metadata)
            unet_mods = _factors_of(unet, spec.name)
            loaded.append(spec)
        text_mods: dict[str, Factor] = {}
        if any(k.startswith("text_encoder.") for k in state):
            if text is None:
                raise UserError(f"LoRA {spec.path.name} adapts a text encoder; this model has none")
            _inject_text(text, spec, state, alphas, metadata)
            text_mods = _factors_of(text, spec.name)
            _restore_layers(text)
            with torch.no_grad():
                for name, f in text_mods.items():
                    w = text.get_submodule(name).weight
                    w += torch.from_numpy(f.delta()).to(w.dtype) * spec.scale
        entries.append({**recorded([spec])[0], "modules": {"unet": len(unet_mods), "text_encoder": len(text_mods)}})
    if loaded:
        unet.set_adapters([s.name for s in loaded], weights=[s.scale for s in loaded])
        unet.fuse_lora(adapter_names=[s.name for s in loaded])
        unet.unload_lora()
    return entries


def recorded(specs: list[LoraSpec]) -> list[dict]:
    """How a bundle's and a calibration set's manifest name the adapters merged into their model."""
    return [{"file": s.path.name, "sha256": sha256_file(s.path), "scale": s.scale} for s in specs]


def check_same_adapters(merged: list[dict], given: list[LoraSpec], what: str, command: str) -> None:
    """Refuse in one line when the adapters ``what`` was made with (its manifest's entries) are not
    ``given`` (the files and scales passed now to ``command``): the torch side would be another model."""
    def key(entries):
        return sorted((e["sha256"], float(e["scale"])) for e in entries)

    def named(entries):
        return ("LoRA " + ", ".join(f"{e['file']}:{float(e['scale']):g}" for e in entries)) if entries else "no LoRA"

    now = recorded(given)
    if key(merged) == key(now):
        return
    raise UserError(f"{what} was made with {named(merged)}, but {command} was given {named(now)}; "
                    f"pass the same --lora FILE:SCALE to both (a file is matched by its sha256)")
