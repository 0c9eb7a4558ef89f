"""Export a diffusers pipeline's CLIP (or BERT) tokenizer as one ``tokenizer.json`` for the runtime.

transformers 5's ``CLIPTokenizer`` is backed by a ``tokenizers.Tokenizer`` that it
builds itself from vocab.json + merges.txt (or from the vocab/merges inside a
tokenizer.json), adding the special tokens (pad included) as added tokens. Its
``__call__`` for CLIP does no Python-side text processing: it sets truncation and
padding on that backend and calls ``encode_batch``. So we save exactly that
backend (truncation and padding cleared; the runtime sets them from the spec) and
record in the spec what transformers would pass to ``enable_truncation`` /
``enable_padding`` for ``padding="max_length", max_length=model_max_length,
truncation=True`` (how diffusers' StableDiffusionPipeline calls it).

Real tokenizers seen in the wild: SD 1.x pads with "<|endoftext|>", SD 2.x with
"!" (id 0). Both are handled the same way: the pad id is whatever transformers
resolves ``pad_token`` to.

BERT (``kind="bert"``): the latent diffusion paper's text-to-image model (diffusers'
``LDMTextToImagePipeline``) uses a WordPiece ``BertTokenizer``. In transformers 5 it
too is a ``TokenizersBackend`` whose ``__call__`` only sets truncation/padding and
calls ``encode_batch``, so the same approach holds: save the backend it built
(BertNormalizer + BertPreTokenizer + WordPiece + "[CLS] $A [SEP]" template; the
normalizer comes from tokenizer_config's do_lower_case / strip_accents /
tokenize_chinese_chars, which is why we save transformers' backend rather than copy
the folder's tokenizer.json). That pipeline calls its tokenizer with the literal
``max_length=77``, not ``model_max_length``: pass ``max_length=77`` for it. In the
spec, ``bos_token_id`` / ``eos_token_id`` are [CLS] / [SEP] (first / last token of
every row).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ldm_runtime.errors import UserError, one_line

TOKENIZER_FILE = "tokenizer.json"
# A tokenizer_config.json without model_max_length gets transformers' int(1e30).
_MAX_SANE_LENGTH = 1_000_000

# Build-time self-check: the saved file, encoded by the runtime, must give the
# same ids as transformers for these (covers casing, whitespace, punctuation,
# unicode, numbers, special-token text and truncation).
_PROBES = (
    "",
    "a photo of a cat",
    "  A   PHOTO\tof a Cat!!  ",
    "an astronaut riding a horse, 4k, 1990's, hi-res?!",
    "café naïve 🚀 日本語 <|endoftext|> don't",
    " ".join(["a red circle above a blue square"] * 20),
)
_BERT_PROBES = (
    "",
    "a photo of a cat",
    "  A   PHOTO\tof a Cat!!  ",
    "an astronaut riding a horse, 4k, 1990's, hi-res?!",
    "Café naïve Ångström 🚀 日本語 中文 [CLS] [mask] [SEP] don't",
    "\u200b zero width \u00a0 nbsp \x00 control",
    " ".join(["a red circle above a blue square"] * 20),
)
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"cannot read {path}: expected a JSON object")
    return data


def _clip_files(tokenizer_dir: Path) -> None:
    has_json = (tokenizer_dir / TOKENIZER_FILE).is_file()
    if not (has_json or ((tokenizer_dir / "vocab.json").is_file() and (tokenizer_dir / "merges.txt").is_file())):
        raise UserError(f"no usable tokenizer in {tokenizer_dir}: expected vocab.json + merges.txt or tokenizer.json")


def _bert_files(tokenizer_dir: Path) -> None:
    if (tokenizer_dir / TOKENIZER_FILE).is_file() or (tokenizer_dir / "vocab.txt").is_file():
        return
    if (tokenizer_dir / "vocab.json").is_file() and (tokenizer_dir / "merges.txt").is_file():
        raise UserError(f"the tokenizer in {tokenizer_dir} has vocab.json + merges.txt (BPE, as CLIP), "
                        "not a BERT tokenizer's vocab.txt")
    raise UserError(f"no usable tokenizer in {tokenizer_dir}: expected vocab.txt or tokenizer.json")


def _clip_model(model: dict, tokenizer_dir: Path) -> None:
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        raise UserError(f"the tokenizer in {tokenizer_dir} is not a CLIP tokenizer (BPE with '</w>' word ends)")


def _bert_model(model: dict, tokenizer_dir: Path) -> None:
    if model.get("type") != "WordPiece":
        raise UserError(f"the tokenizer in {tokenizer_dir} is not a BERT tokenizer (WordPiece)")
    unk = model.get("unk_token")
    if unk not in (model.get("vocab") or {}):
        raise UserError(f"the BERT tokenizer in {tokenizer_dir} has no unknown token {unk!r} in its vocabulary")


@dataclass(frozen=True)
class _Kind:
    label: str                               # in messages
    cls_name: str                            # the transformers class (and tokenizer_config's class prefix)
    model_type: str                          # the tokenizer.json model
    special: tuple[str, str, str]            # transformers' names of the pad, first and last tokens
    probes: tuple[str, ...]
    files: Callable[[Path], None]            # checks the folder's files
    model: Callable[[dict, Path], None]      # checks the backend's model
    length_hint: str


_KINDS = {
    "clip": _Kind("CLIP", "CLIPTokenizer", "BPE", ("pad", "bos", "eos"), _PROBES, _clip_files, _clip_model,
                  "set it in tokenizer_config.json (77 for Stable Diffusion)"),
    "bert": _Kind("BERT", "BertTokenizer", "WordPiece", ("pad", "cls", "sep"), _BERT_PROBES, _bert_files,
                  _bert_model, "set it in tokenizer_config.json or pass max_length (77 for LDMTextToImagePipeline)"),
}


def _check_declared_kind(tokenizer_dir: Path, kind: _Kind) -> None:
    """Refuse a folder whose tokenizer_config.json names another tokenizer class, or whose tokenizer.json
    holds another model type, than the kind expected."""
    config = tokenizer_dir / "tokenizer_config.json"
    if config.is_file():
        cls_name = _read_json(config).get("tokenizer_class")
        if isinstance(cls_name, str) and not cls_name.startswith(kind.cls_name):
            raise UserError(f"the tokenizer in {tokenizer_dir} is a {cls_name}, not a {kind.label} tokenizer")
    if (tokenizer_dir / TOKENIZER_FILE).is_file():
        model = _read_json(tokenizer_dir / TOKENIZER_FILE).get("model")
        found = model.get("type") if isinstance(model, dict) else None
        if found not in (None, kind.model_type):
            raise UserError(f"the tokenizer.json in {tokenizer_dir} holds a {found} model, not a {kind.label} "
                            f"({kind.model_type}) tokenizer")


def _load_tokenizer(kind: _Kind, tokenizer_dir: Path):
    """``transformers.<class>.from_pretrained``, with a failure on the user's files as one line."""
    import transformers

    cls = getattr(transformers, kind.cls_name)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # class-mismatch chatter; we check that ourselves
    try:
        return cls.from_pretrained(str(tokenizer_dir))
    except (AttributeError, NameError, AssertionError):  # a bug (ours or the library's), not the files: exit 3
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt vocab/merges/config (the tokenizers library raises plain
        # Exception for a malformed tokenizer.json): the user's files
        raise UserError(f"cannot load the {kind.label} tokenizer in {tokenizer_dir}: {one_line(exc)}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)


def _usable_length(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 2 <= value <= _MAX_SANE_LENGTH


def export_tokenizer(tokenizer_dir: Path, out_dir: Path, kind: str = "clip", max_length: int | None = None) -> dict:
    """Write ``out_dir/tokenizer.json`` and return the manifest's tokenizer spec.

    The spec (consumed by ``ldm_runtime.tokenizer.Tokenizer.from_bundle``)::

        {"file": "tokenizer.json", "kind": "clip", "model_max_length": 77,
         "pad_token_id": 49407, "bos_token_id": 49406, "eos_token_id": 49407,
         "do_lower_case": true, "padding_side": "right", "truncation_side": "right",
         "split_special_tokens": false}

    ``do_lower_case`` is informational (lowercasing is in tokenizer.json's normalizer).
    ``kind="bert"`` exports a WordPiece ``BertTokenizer`` (LDMTextToImagePipeline), with bos/eos =
    [CLS]/[SEP]. ``max_length``, if given, replaces the tokenizer's ``model_max_length`` (the ids are those
    of ``tokenizer(..., max_length=max_length)``).
    """
    if kind not in _KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}; expected one of: {', '.join(_KINDS)}")
    k = _KINDS[kind]
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    if max_length is not None and not _usable_length(max_length):
        raise UserError(f"max_length must be an integer from 2 to {_MAX_SANE_LENGTH}, got {max_length!r}")
    if not tokenizer_dir.is_dir():
        raise UserError(f"no tokenizer folder at {tokenizer_dir}")
    _check_declared_kind(tokenizer_dir, k)
    k.files(tokenizer_dir)
    tok = _load_tokenizer(k, tokenizer_dir)
    backend_json = json.loads(tok.backend_tokenizer.to_str())
    k.model(backend_json.get("model") or {}, tokenizer_dir)
    ids = {name: getattr(tok, f"{name}_token_id") for name in k.special}
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise UserError(f"the {k.label} tokenizer in {tokenizer_dir} has no {', '.join(missing)} token in its "
                        "vocabulary")
    max_len = tok.model_max_length if max_length is None else max_length
    if not _usable_length(max_len):
        raise UserError(f"the {k.label} tokenizer in {tokenizer_dir} has no usable model_max_length "
                        f"(got {max_len}); {k.length_hint}")
    normalizer = backend_json.get("normalizer") or {}
    pad, first, last = (int(ids[name]) for name in k.special)
    spec = {
        "file": TOKENIZER_FILE, "kind": kind, "model_max_length": int(max_len),
        "pad_token_id": pad, "bos_token_id": first, "eos_token_id": last,
        "do_lower_case": bool(normalizer.get("lowercase")) or "Lowercase" in json.dumps(normalizer),
        "padding_side": tok.padding_side, "truncation_side": tok.truncation_side,
        "split_special_tokens": bool(tok.split_special_tokens),
    }
    _write(backend_json, out_dir)
    _self_check(tok, out_dir / TOKENIZER_FILE, spec, k.probes)
    return spec


def _write(backend_json: dict, out_dir: Path) -> None:
    backend_json["truncation"] = None  # transformers sets these per call; so does the runtime
    backend_json["padding"] = None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / TOKENIZER_FILE
    path.write_text(json.dumps(backend_json, ensure_ascii=False, indent=2), encoding="utf-8")


def _self_check(tok, path: Path, spec: dict, probes: tuple[str, ...]) -> None:
    import logging

    from ldm_runtime.tokenizer import Tokenizer

    runtime = Tokenizer.from_bundle(path, spec)
    logger = logging.getLogger("ldm_runtime.tokenizer")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the long probe is truncated on purpose
    try:
        got = runtime.encode(list(probes)).tolist()
    finally:
        logger.setLevel(level)
    want = tok(list(probes), padding="max_length", max_length=spec["model_max_length"], truncation=True).input_ids
    if got != want:
        bad = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
        raise RuntimeError(f"exported tokenizer disagrees with transformers on {probes[bad]!r}: {got[bad]} != {want[bad]}")
