"""LoRA adapter files for the tests, made with PEFT on a model folder of the registry.

:func:`make_lora` injects PEFT LoRA layers (random A and B, so the adapter changes the output) into the
model's UNet attention (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) and, if asked, the text encoder's
attention, and saves them with diffusers' ``save_lora_weights`` (the diffusers/PEFT format, alphas in the
file's adapter metadata). :func:`to_kohya` rewrites such a file in the kohya/A1111 format.
:func:`peft_merged` gives the oracle: the same modules with PEFT's own ``merge`` applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class LoraFile:
    path: Path
    rank: int
    alpha: float
    unet_targets: tuple[str, ...]
    text_targets: tuple[str, ...]
    seed: int


def _inject(module, targets, rank: int, alpha: float, seed: int, std: float):
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    inject_adapter_in_model(config, module)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return get_peft_model_state_dict(module), config


def make_lora(model: Path, out: Path, *, seed: int = 0, rank: int = 4, alpha: float = 8.0,
              unet_targets: tuple[str, ...] = UNET_ATTENTION, text_targets: tuple[str, ...] = (),
              std: float = 0.15) -> LoraFile:
    """A random LoRA for ``model`` (a diffusers folder) at ``out`` (a .safetensors file)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    unet_sd = text_sd = None
    meta = {}
    if unet_targets:
        unet_sd, cfg = _inject(pipe.unet, unet_targets, rank, alpha, seed, std)
        meta["unet_lora_adapter_metadata"] = cfg.to_dict()
    if text_targets:
        text_sd, cfg = _inject(pipe.text_encoder, text_targets, rank, alpha, seed + 1, std)
        meta["text_encoder_lora_adapter_metadata"] = cfg.to_dict()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(out.parent, unet_lora_layers=unet_sd, text_encoder_lora_layers=text_sd,
                                              weight_name=out.name, **meta)
    return LoraFile(out, rank, alpha, tuple(unet_targets), tuple(text_targets), seed)


def to_kohya(lora: LoraFile, out: Path) -> Path:
    """The same adapter in the kohya/A1111 format: ``lora_unet_<module>`` / ``lora_te_text_model_<module>``
    keys with ``lora_down`` / ``lora_up`` and an ``alpha`` per module."""
    import torch
    from safetensors.torch import load_file, save_file

    out_sd = {}
    for key, value in load_file(str(lora.path)).items():
        component, rest = key.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)
        if component == "text_encoder":
            module = "text_model." + module
        base = ("lora_unet_" if component == "unet" else "lora_te_") + module.replace(".", "_")
        out_sd[base + (".lora_down.weight" if kind.startswith("A") else ".lora_up.weight")] = value
        out_sd[base + ".alpha"] = torch.tensor(float(lora.alpha))
    save_file(out_sd, str(out))
    return Path(out)


def peft_merged(pipe, lora: LoraFile, scale: float = 1.0) -> None:
    """The oracle: ``lora``'s factors loaded into ``pipe``'s modules with PEFT itself and merged by PEFT
    (``LoraLayer.merge``) at ``scale``; the PEFT layers are then removed, the merged weights kept."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    state = load_file(str(lora.path))
    for component, targets in (("unet", lora.unet_targets), ("text_encoder", lora.text_targets)):
        if not targets:
            continue
        module = getattr(pipe, component)
        sub = {k.removeprefix(component + "."): v for k, v in state.items() if k.startswith(component + ".")}
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(targets))
        inject_adapter_in_model(config, module, adapter_name="oracle")
        set_peft_model_state_dict(module, sub, adapter_name="oracle")
        with torch.no_grad():
            for name, layer in list(module.named_modules()):
                if isinstance(layer, LoraLayer):
                    layer.scaling["oracle"] *= scale
                    layer.merge(adapter_names=["oracle"])
                    parent, _, child = name.rpartition(".")
                    setattr(module.get_submodule(parent) if parent else module, child, layer.base_layer)
        if "peft_config" in module.__dict__:
            del module.peft_config
