"""Reading an original checkpoint's weights into diffusers modules."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from ldm_runtime.errors import UserError, one_line

from .config import Spec, parse_config
from .names import (CLIP_PREFIX, OPENCLIP_PREFIX, SAFETENSORS_SUFFIX, TORCH_SUFFIXES, Entry, IGNORED_KEYS,
                    IGNORED_PREFIXES, original_shape, text_entries, unet_entries, vae_entries)

def _pickle_refusal(path: Path, err: BaseException) -> UserError:
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f" ({m[1]})" if m else ""
    return UserError(
        f"cannot convert {path}: it holds pickled code{what}, and loading it would run arbitrary code, so "
        f"ldm-export refuses it; if you trust the file, convert it to .safetensors in an environment you trust "
        f"(torch.load with weights_only=False, then safetensors.torch.save_file of its state_dict) and pass that")


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"cannot convert {path}: not a readable .safetensors file "
                            f"({one_line(e, with_type=False)})") from None
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            # the weights-only unpickler met something other than tensors and plain containers: code
            if "Weights only load failed" in msg and not re.search(r"Unsupported operand|invalid load key", msg):
                raise _pickle_refusal(path, e) from None
            raise UserError(f"cannot convert {path}: not a readable PyTorch checkpoint "
                            f"({one_line(e, with_type=False)})") from None
        except Exception as e:  # torch.load fails on garbage in many ways (KeyError, IndexError, RuntimeError, …)
            raise UserError(f"cannot convert {path}: not a readable PyTorch checkpoint "
                            f"({one_line(e)})") from None
    else:
        raise UserError(f"cannot convert {path}: unsupported checkpoint extension {path.suffix or '(none)'}; "
                        f"supported: {SAFETENSORS_SUFFIX}, {', '.join(TORCH_SUFFIXES)}")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"cannot convert {path}: it holds no state dict of tensors")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    # very old transformers versions had no "text_model." level inside CLIPTextModel
    old = "cond_stage_model.transformer."
    if not any(k.startswith(CLIP_PREFIX) for k in sd) and any(k.startswith(old) for k in sd):
        sd = {(CLIP_PREFIX + k[len(old):] if k.startswith(old) else k): v for k, v in sd.items()}
    return sd


def _mismatch(checkpoint: Path, config: Path, missing: list[str], unexpected: list[str]) -> UserError:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", …" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' * (len(missing) != 1)} ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) != 1)} ({few(unexpected)})")
    return UserError(f"cannot convert {checkpoint}: its weights do not match config {config.name}: "
                     f"{', '.join(parts)}; is this the config that belongs to this checkpoint?")


class _MissingKey(Exception):
    pass


def _text_config(sd: dict[str, Any], spec: Spec, tokenizer_dir: Path | None) -> dict[str, Any]:
    """CLIPTextConfig kwargs read off the weights (the YAML names a pretrained encoder, not its shape)."""

    def get(k: str) -> Any:
        if k not in sd:
            raise _MissingKey(k)
        return sd[k]

    if spec.text_kind == "clip":
        tok = get(CLIP_PREFIX + "embeddings.token_embedding.weight")
        pos = get(CLIP_PREFIX + "embeddings.position_embedding.weight")
        layer_re, fc1 = re.compile(re.escape(CLIP_PREFIX) + r"encoder\.layers\.(\d+)\."), "mlp.fc1.weight"
        act = "quick_gelu"
        prefix = CLIP_PREFIX + "encoder.layers.0."
    else:
        tok = get(OPENCLIP_PREFIX + "token_embedding.weight")
        pos = get(OPENCLIP_PREFIX + "positional_embedding")
        layer_re, fc1 = re.compile(re.escape(OPENCLIP_PREFIX) + r"transformer\.resblocks\.(\d+)\."), "mlp.c_fc.weight"
        act = "gelu"
        prefix = OPENCLIP_PREFIX + "transformer.resblocks.0."
    n_layers = 1 + max((int(m[1]) for k in sd if (m := layer_re.match(k))), default=-1)
    inter = get(prefix + fc1).shape[0]
    if spec.text_layer == "penultimate":
        n_layers -= 1
    if n_layers < 1:
        raise _MissingKey(prefix + fc1)
    vocab, hidden = tok.shape
    heads = spec.text_heads or (hidden // 64 if hidden % 64 == 0 else None)
    if not heads or hidden % heads:
        raise UserError(f"cannot tell the text encoder's number of attention heads (hidden size {hidden}); "
                        "add 'ldm_export: {text_encoder: {num_attention_heads: N}}' at the top of the YAML")
    bos, eos = vocab - 2, vocab - 1  # CLIP's convention: the two special tokens come last
    if tokenizer_dir is not None:
        bos, eos = _tokenizer_ids(tokenizer_dir, vocab, bos, eos)
    return dict(vocab_size=int(vocab), hidden_size=int(hidden), intermediate_size=int(inter),
                num_hidden_layers=n_layers, num_attention_heads=int(heads),
                max_position_embeddings=int(pos.shape[0]), hidden_act=act, layer_norm_eps=1e-5,
                bos_token_id=bos, eos_token_id=eos, pad_token_id=1)


def _tokenizer_ids(tokenizer_dir: Path, vocab: int, bos: int, eos: int) -> tuple[int, int]:
    import json

    vf = tokenizer_dir / "vocab.json"
    if not vf.is_file():
        return bos, eos
    try:
        tokens = json.loads(vf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"tokenizer {vf} is not valid JSON ({e})") from None
    if len(tokens) > vocab:
        raise UserError(f"tokenizer {tokenizer_dir} has {len(tokens)} tokens but the checkpoint's text encoder "
                        f"has only {vocab} embeddings: they do not belong together")
    return int(tokens.get("<|startoftext|>", bos)), int(tokens.get("<|endoftext|>", eos))


def convert_checkpoint(checkpoint: Path, config: Path, tokenizer_dir: Path | None = None) -> dict:
    """Convert an original single-file checkpoint + its YAML into diffusers modules (eval mode, fp32).

    Returns ``{"unet", "vae", "text_encoder" (None when the file holds no text-encoder weights),
    "scheduler_config", "family": "text-to-image"}``. Raises a one-line :class:`UserError` on bad input.
    """
    checkpoint, config = Path(checkpoint), Path(config)
    tokenizer_dir = _check_paths(checkpoint, config, tokenizer_dir)
    spec = parse_config(config)  # config errors first: reading the weights is the slow part
    sd = _read_state_dict(checkpoint)
    parts, missing = _empty_modules(spec, sd, tokenizer_dir)
    _check_keys(checkpoint, config, spec, sd, parts, missing)
    out: dict[str, Any] = {"text_encoder": None, **_load_weights(checkpoint, config, parts, sd)}
    if spec.scale_by_std and "scale_factor" in sd and sd["scale_factor"].numel() == 1:
        out["vae"].register_to_config(scaling_factor=float(sd["scale_factor"]))
    for m in filter(None, out.values()):
        m.requires_grad_(False)
    out["scheduler_config"] = dict(spec.scheduler_config)
    out["family"] = "text-to-image"
    return out


def _check_paths(checkpoint: Path, config: Path, tokenizer_dir: Path | None) -> Path | None:
    for what, p in (("checkpoint", checkpoint), ("config", config)):
        if not p.exists():
            raise UserError(f"cannot convert: {what} {p} does not exist")
        if not p.is_file():
            raise UserError(f"cannot convert: {what} {p} is not a file")
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tokenizer_dir is not None and not tokenizer_dir.is_dir():
        raise UserError(f"cannot convert: tokenizer folder {tokenizer_dir} does not exist")
    return tokenizer_dir


Parts = list[tuple[str, Any, list[Entry]]]   # (name, module on the meta device, its key table)


def _empty_modules(spec: Spec, sd: dict[str, Any], tokenizer_dir: Path | None) -> tuple[Parts, list[str]]:
    """The diffusers modules of ``spec`` with parameters on the meta device, and the text keys found missing."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():  # parameters on the meta device: the checkpoint supplies every one
        unet = UNet2DConditionModel(**spec.unet)
        vae = AutoencoderKL(**spec.vae)
    parts: Parts = [("unet", unet, unet_entries(unet)), ("vae", vae, vae_entries(vae))]
    missing: list[str] = []
    if any(k.startswith("cond_stage_model.") for k in sd):
        try:
            tcfg = _text_config(sd, spec, tokenizer_dir)
        except _MissingKey as e:
            missing.append(str(e.args[0]))
        else:
            with init_empty_weights():
                text = CLIPTextModel(CLIPTextConfig(**tcfg))
            parts.append(("text_encoder", text, text_entries(text, spec.text_kind)))
    return parts, missing


def _check_keys(checkpoint: Path, config: Path, spec: Spec, sd: dict[str, Any], parts: Parts,
                missing: list[str]) -> None:
    """Every key of the tables is in the checkpoint and every checkpoint key is known (or ignorable)."""
    expected = {e.orig for _, _, entries in parts for e in entries}
    missing = missing + list(dict.fromkeys(e.orig for _, _, entries in parts for e in entries if e.orig not in sd))
    skip_layer = None
    if spec.text_kind == "openclip" and spec.text_layer == "penultimate" and len(parts) == 3:
        skip_layer = f"{OPENCLIP_PREFIX}transformer.resblocks.{parts[2][1].config.num_hidden_layers}."
    unexpected = [k for k in sd if k not in expected and k not in IGNORED_KEYS
                  and not k.startswith(IGNORED_PREFIXES) and not (skip_layer and k.startswith(skip_layer))]
    if missing or unexpected:
        raise _mismatch(checkpoint, config, missing, unexpected)


def _load_weights(checkpoint: Path, config: Path, parts: Parts, sd: dict[str, Any]) -> dict[str, Any]:
    """Assign the checkpoint's tensors (reshaped, split where fused) to the modules; by module name."""
    import torch

    out: dict[str, Any] = {}
    bad: list[str] = []
    for name, module, entries in parts:
        shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        state = {}
        for e in entries:
            t = sd[e.orig]
            want = original_shape(e, shapes[e.diff])
            if tuple(t.shape) != want:
                bad.append(f"{e.orig}: checkpoint {list(t.shape)} vs config {list(want)}")
                continue
            if e.chunk:
                t = t.chunk(e.chunk[1], dim=0)[e.chunk[0]]
            state[e.diff] = t.reshape(shapes[e.diff]).to(torch.float32).contiguous()
        if not bad:
            result = module.load_state_dict(state, strict=False, assign=True)
            if result.unexpected_keys or any(not k.endswith("position_ids") for k in result.missing_keys):
                raise RuntimeError(f"{name}: key table incomplete: {result}")  # a bug, never the user's fault
            out[name] = module.eval()
    if bad:
        raise UserError(f"cannot convert {checkpoint}: its weights do not match config {config.name}: "
                        f"{len(bad)} size mismatch{'es' * (len(bad) != 1)} ({'; '.join(bad[:3])}"
                        f"{'; …' if len(bad) > 3 else ''}); is this the config that belongs to this checkpoint?")
    return out
