"""The tokenizer of a bundle (CLIP or BERT), on the ``tokenizers`` library alone.

The bundle holds one ``tokenizer.json`` (written by ``ldm_export.tokenizer_export``
from the very backend that transformers' ``CLIPTokenizer`` / ``BertTokenizer``
encodes with) and a small spec in the manifest. :meth:`Tokenizer.encode` reproduces
the ids of

    tokenizer(prompts, padding="max_length", max_length=spec["model_max_length"],
              truncation=True).input_ids

which is how diffusers' StableDiffusionPipeline (CLIP, ``model_max_length``) and
LDMTextToImagePipeline (BERT WordPiece, ``max_length=77``) call their tokenizers.
transformers 5 does no Python-side text processing for either: it sets truncation
and padding on the backend and calls ``encode_batch``; this module does the same.
For ``kind="bert"`` the spec's ``bos_token_id`` / ``eos_token_id`` are [CLS] / [SEP].

Imports only numpy, stdlib and (lazily) ``tokenizers``; never torch or transformers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ldm_runtime.errors import BackendUnavailable, BundleError, one_line

logger = logging.getLogger(__name__)

SPEC_KIND = "clip"  # the original kind; kept for importers
# spec kind -> (name in messages, the tokenizer.json model it must hold)
SPEC_KINDS = {"clip": ("CLIP", "BPE"), "bert": ("BERT", "WordPiece")}
_REQUIRED_INT_KEYS = ("model_max_length", "pad_token_id", "bos_token_id", "eos_token_id")
_SIDES = ("right", "left")
_QUOTE = 80  # characters of dropped prompt text quoted in the truncation warning


def _import_tokenizer_class():
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BackendUnavailable("the 'tokenizers' package", "tokenizers") from None
    return Tokenizer


def _check_spec(spec: Any) -> dict:
    if not isinstance(spec, dict):
        raise BundleError(f"tokenizer spec in the manifest must be an object, got {type(spec).__name__}")
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in SPEC_KINDS:
        expected = " or ".join(repr(k) for k in SPEC_KINDS)
        raise BundleError(f"unsupported tokenizer kind {kind!r} in the manifest (expected {expected})")
    for key in _REQUIRED_INT_KEYS:
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BundleError(f"tokenizer spec: {key!r} must be a non-negative integer, got {value!r}")
    if spec["model_max_length"] < 2:
        raise BundleError(f"tokenizer spec: model_max_length must be at least 2, got {spec['model_max_length']}")
    for key in ("padding_side", "truncation_side"):
        if spec.get(key, "right") not in _SIDES:
            raise BundleError(f"tokenizer spec: {key!r} must be 'right' or 'left', got {spec.get(key)!r}")
    return spec


class Tokenizer:
    """Prompt -> fixed-length int64 ids, identical to transformers' CLIPTokenizer / BertTokenizer."""

    def __init__(self, tokenizer: Any, tokenizer_json: str, spec: dict):
        self.spec = spec
        self.kind: str = spec["kind"]
        self._name, model_type = SPEC_KINDS[self.kind]
        found = type(tokenizer.model).__name__
        if found != model_type:
            raise BundleError(f"tokenizer file holds a {found} model, but the manifest says {self.kind!r} "
                              f"(a {model_type} model)")
        self.model_max_length: int = spec["model_max_length"]
        self.pad_token_id: int = spec["pad_token_id"]
        self.bos_token_id: int = spec["bos_token_id"]
        self.eos_token_id: int = spec["eos_token_id"]
        self._truncation_side: str = spec.get("truncation_side", "right")
        self._json = tokenizer_json
        self._raw: Any = None  # untruncated, unpadded copy; built on first truncation
        self._warned: set[str] = set()  # prompts already warned about (a grid encodes each several times)

        pad_token = tokenizer.id_to_token(self.pad_token_id)
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if tokenizer.id_to_token(spec[key]) is None:
                raise BundleError(f"tokenizer spec: {key} {spec[key]} is not in the tokenizer's vocabulary")
        # Exactly what transformers' set_truncation_and_padding sets for
        # padding="max_length", max_length=model_max_length, truncation=True.
        tokenizer.enable_truncation(
            max_length=self.model_max_length, stride=0, strategy="longest_first", direction=self._truncation_side
        )
        tokenizer.enable_padding(
            direction=spec.get("padding_side", "right"),
            pad_id=self.pad_token_id,
            pad_type_id=0,
            pad_token=pad_token,
            length=self.model_max_length,
            pad_to_multiple_of=None,
        )
        split = bool(spec.get("split_special_tokens", False))
        if split or hasattr(tokenizer, "encode_special_tokens"):
            tokenizer.encode_special_tokens = split
        self._tok = tokenizer

    @classmethod
    def from_bundle(cls, path_to_tokenizer_json: Path, spec: dict) -> "Tokenizer":
        backend_cls = _import_tokenizer_class()
        spec = _check_spec(spec)
        path = Path(path_to_tokenizer_json)
        if not path.is_file():
            raise BundleError(f"tokenizer file is missing from the bundle: {path}")
        try:
            text = path.read_text(encoding="utf-8")
            tokenizer = backend_cls.from_str(text)
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise BundleError(f"corrupt tokenizer file {path}: {one_line(exc)}") from None
        return cls(tokenizer, text, spec)

    def encode(self, prompts: list[str]) -> np.ndarray:
        """Ids of shape (len(prompts), model_max_length), int64: BOS, tokens, EOS, padding."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        for p in prompts:
            if not isinstance(p, str):
                raise TypeError(f"prompts must be strings, got {type(p).__name__}")
        if not prompts:
            return np.zeros((0, self.model_max_length), dtype=np.int64)
        encodings = self._tok.encode_batch(prompts, add_special_tokens=True)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        if ids.shape != (len(prompts), self.model_max_length):  # would be our bug, not the user's
            raise RuntimeError(f"tokenizer produced ids of shape {ids.shape}, expected "
                               f"{(len(prompts), self.model_max_length)}")
        for prompt, enc in zip(prompts, encodings):
            if enc.overflowing:
                self._warn_truncated(prompt)
        return ids

    def _warn_truncated(self, prompt: str) -> None:
        if prompt in self._warned:
            return
        self._warned.add(prompt)
        if self._raw is None:
            backend_cls = _import_tokenizer_class()
            raw = backend_cls.from_str(self._json)
            raw.no_truncation()
            raw.no_padding()
            if hasattr(raw, "encode_special_tokens"):
                raw.encode_special_tokens = self._tok.encode_special_tokens
            self._raw = raw
        raw = self._raw
        content = raw.encode(prompt, add_special_tokens=False).ids
        post = raw.post_processor
        n_special = post.num_special_tokens_to_add(False) if post is not None else 0
        keep = max(self.model_max_length - n_special, 0)
        n_dropped = len(content) - keep
        if n_dropped <= 0:
            return
        dropped = content[keep:] if self._truncation_side == "right" else content[:n_dropped]
        suffix = getattr(raw.model, "end_of_word_suffix", None) or ""  # CLIP's "</w>"; WordPiece has none
        text = raw.decode(dropped, skip_special_tokens=False)
        if suffix:
            text = text.replace(suffix, " ")
        text = " ".join(text.split())
        if len(text) > _QUOTE:
            text = text[:_QUOTE - 1] + "…"
        logger.warning(
            "The prompt was truncated because %s can only handle sequences up to %d tokens; "
            "%d token(s) dropped: %r", self._name, self.model_max_length, n_dropped, text,
        )


ClipTokenizer = Tokenizer  # the name pipeline.py (and older code) imports
