"""Tokenizer export, and the runtime tokenizer against transformers: exactly its ids (as diffusers calls it)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.models.sd import write_clip_tokenizer
from ldm_export.tokenizer_export import export_tokenizer
from ldm_runtime.errors import BackendUnavailable, BundleError, UserError
from ldm_runtime.tokenizer import ClipTokenizer

PROMPTS = [
    "",
    " ",
    "a photo of a cat",
    "A PHOTO OF A CAT",
    "a PhOtO oF a CaT",
    "a  photo\tof\n\na   cat   ",
    "   leading and trailing   ",
    "a red circle, a blue square; a green triangle!",
    "hello!!! what?! (large) [small] {city} 'quoted' \"double\" - dash_underscore",
    "don't it's we're i've i'm you'll he'd THE CAT'S",
    "!",
    "!!",
    "a!b!c",
    "café naïve résumé Ångström straße",
    "e\u0301 vs \u00e9",  # NFC-normalised to the same text
    "🚀🐱 emoji 👩‍👩‍👧 astronaut 🐴",
    "日本語のテキスト 中文 한국어 русский",
    "0 1 12 123 3.14 1990s 4k 1,000,000",
    "zebra xylophone quixotic juxtaposition",
    "<|startoftext|> a cat <|endoftext|>",
    "a cat<|endoftext|>dog",
    "\u200b zero width \u00a0 nbsp",
    " ".join(["a red circle above a blue square"] * 12),
    "astronaut " * 100,
    "x" * 500,
]


def _swap_to_id0(folder: Path, token: str) -> None:
    """Give ``token`` id 0, as in the real CLIP vocab where "!" (SD 2.x's pad) is id 0."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    other = next(t for t, i in vocab.items() if i == 0)
    vocab[other], vocab[token] = vocab[token], 0
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(
    scope="module",
    params=[("<|endoftext|>", 16, False), ("!", 16, False), ("!", 77, True), ("<|endoftext|>", 77, False)],
    ids=["sd1-pad-16", "sd2-pad-16", "sd2-pad-id0-77", "sd1-pad-77"],
)
def tok_dir(request, tmp_path_factory) -> Path:
    pad, max_len, pad_id0 = request.param
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    write_clip_tokenizer(folder, model_max_length=max_len, pad_token=pad)
    if pad_id0:
        _swap_to_id0(folder, pad)
    assert not (folder / "tokenizer.json").exists()  # the older vocab.json + merges.txt layout
    return folder


def _transformers_ids(folder: Path, prompts: list[str]) -> np.ndarray:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder))
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    return np.asarray(ids, dtype=np.int64)


def _export(folder: Path, out: Path) -> tuple[ClipTokenizer, dict]:
    spec = export_tokenizer(folder, out)
    assert json.loads(json.dumps(spec)) == spec  # manifest-safe
    return ClipTokenizer.from_bundle(out / spec["file"], spec), spec


def test_ids_match_transformers(tok_dir, tmp_path, caplog):
    from transformers import CLIPTokenizer

    ref = CLIPTokenizer.from_pretrained(str(tok_dir))
    runtime, spec = _export(tok_dir, tmp_path / "bundle")
    assert list((tmp_path / "bundle").iterdir()) == [tmp_path / "bundle" / "tokenizer.json"]
    assert spec["kind"] == "clip" and spec["file"] == "tokenizer.json"
    assert spec["model_max_length"] == ref.model_max_length
    assert (spec["pad_token_id"], spec["bos_token_id"], spec["eos_token_id"]) == (
        ref.pad_token_id, ref.bos_token_id, ref.eos_token_id)
    if ref.pad_token == "!":
        assert spec["pad_token_id"] != spec["eos_token_id"]

    with caplog.at_level(logging.WARNING, logger="ldm_runtime.tokenizer"):
        got = runtime.encode(PROMPTS)
    want = _transformers_ids(tok_dir, PROMPTS)
    assert got.dtype == np.int64 and got.shape == (len(PROMPTS), spec["model_max_length"])
    for prompt, g, w in zip(PROMPTS, got, want):
        assert g.tolist() == w.tolist(), prompt
    # one at a time gives the same rows as the batch
    for i in (0, 3, len(PROMPTS) - 1):
        assert runtime.encode([PROMPTS[i]]).tolist() == [want[i].tolist()]
    assert runtime.encode([]).shape == (0, spec["model_max_length"])
    assert all(row[0] == spec["bos_token_id"] for row in got)
    assert got[0].tolist() == [spec["bos_token_id"], spec["eos_token_id"]] + [spec["pad_token_id"]] * (
        spec["model_max_length"] - 2)
    assert caplog.records, "truncation of the long prompts must be logged"


def test_truncation_warning_names_dropped_tokens(tok_dir, tmp_path, caplog):
    runtime, spec = _export(tok_dir, tmp_path / "bundle")
    max_len = spec["model_max_length"]
    short = " ".join(["cat"] * (max_len - 2))  # "cat" is one token: fits exactly
    long = " ".join(["cat"] * (max_len - 2) + ["dog", "horse", "mountain"])
    with caplog.at_level(logging.WARNING, logger="ldm_runtime.tokenizer"):
        ids = runtime.encode([short])
    assert not caplog.records
    assert ids[0, -1] == spec["eos_token_id"]
    with caplog.at_level(logging.WARNING, logger="ldm_runtime.tokenizer"):
        ids = runtime.encode([long])
    assert ids.tolist() == _transformers_ids(tok_dir, [long]).tolist()
    assert ids[0, -1] == spec["eos_token_id"]
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "3 token(s) dropped" in message
    assert "'dog horse mountain'" in message


def test_folder_with_tokenizer_json(tok_dir, tmp_path):
    """A folder saved by transformers also holds tokenizer.json; ids are unchanged."""
    from transformers import CLIPTokenizer

    saved = tmp_path / "saved"
    CLIPTokenizer.from_pretrained(str(tok_dir)).save_pretrained(str(saved))
    assert (saved / "tokenizer.json").is_file()
    runtime, _ = _export(saved, tmp_path / "bundle")
    assert runtime.encode(PROMPTS).tolist() == _transformers_ids(tok_dir, PROMPTS).tolist()


def test_tokenizer_json_only(tok_dir, tmp_path):
    from transformers import CLIPTokenizer

    saved = tmp_path / "saved"
    CLIPTokenizer.from_pretrained(str(tok_dir)).save_pretrained(str(saved))
    (saved / "vocab.json").unlink(missing_ok=True)
    (saved / "merges.txt").unlink(missing_ok=True)
    runtime, _ = _export(saved, tmp_path / "bundle")
    assert runtime.encode(PROMPTS).tolist() == _transformers_ids(tok_dir, PROMPTS).tolist()


def test_conftest_fixture_round_trip(tiny_tokenizer_dir, tmp_path):
    runtime, spec = _export(tiny_tokenizer_dir, tmp_path / "bundle")
    assert spec["model_max_length"] == 16
    assert runtime.encode(PROMPTS[:8]).tolist() == _transformers_ids(tiny_tokenizer_dir, PROMPTS[:8]).tolist()


# --- errors -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    write_clip_tokenizer(folder, model_max_length=16)
    out = tmp_path_factory.mktemp("bundle")
    return out / "tokenizer.json", export_tokenizer(folder, out)


def test_missing_tokenizer_folder(tmp_path):
    with pytest.raises(UserError, match="no tokenizer folder"):
        export_tokenizer(tmp_path / "nope" / "tokenizer", tmp_path / "out")


def test_empty_tokenizer_folder(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(UserError, match="no usable tokenizer"):
        export_tokenizer(tmp_path / "tokenizer", tmp_path / "out")
    assert not (tmp_path / "out" / "tokenizer.json").exists()


def test_not_a_clip_tokenizer(tmp_path):
    folder = tmp_path / "tokenizer"
    write_clip_tokenizer(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "T5Tokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="not a CLIP tokenizer"):
        export_tokenizer(folder, tmp_path / "out")


def test_non_bpe_tokenizer_json(tmp_path):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(UserError, match="not a CLIP"):
        export_tokenizer(folder, tmp_path / "out")


def test_corrupt_input_files(tmp_path):
    folder = tmp_path / "tokenizer"
    write_clip_tokenizer(folder)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError) as info:
        export_tokenizer(folder, tmp_path / "out")
    assert "\n" not in str(info.value)

    folder2 = tmp_path / "tokenizer2"
    write_clip_tokenizer(folder2)
    (folder2 / "vocab.json").write_text("[1, 2")
    with pytest.raises(UserError) as info:
        export_tokenizer(folder2, tmp_path / "out2")
    assert "\n" not in str(info.value)


def test_missing_model_max_length(tmp_path):
    folder = tmp_path / "tokenizer"
    write_clip_tokenizer(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["model_max_length"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="model_max_length"):
        export_tokenizer(folder, tmp_path / "out")


@pytest.mark.parametrize("content", ["{not json", "", '{"model": 3}', "\xff\xfe garbage"])
def test_corrupt_bundle_tokenizer_json(bundle, tmp_path, content):
    _, spec = bundle
    bad = tmp_path / "tokenizer.json"
    bad.write_bytes(content.encode("latin-1"))
    with pytest.raises(BundleError) as info:
        ClipTokenizer.from_bundle(bad, spec)
    assert "\n" not in str(info.value)


def test_missing_bundle_tokenizer_json(bundle, tmp_path):
    _, spec = bundle
    with pytest.raises(BundleError, match="missing"):
        ClipTokenizer.from_bundle(tmp_path / "tokenizer.json", spec)


@pytest.mark.parametrize("change", [
    {"kind": "t5"}, {"model_max_length": None}, {"pad_token_id": -1}, {"eos_token_id": 10**9},
    {"model_max_length": "77"}, {"padding_side": "middle"},
])
def test_bad_spec(bundle, change):
    path, spec = bundle
    with pytest.raises(BundleError):
        ClipTokenizer.from_bundle(path, {**spec, **change})


def test_tokenizers_missing(bundle, monkeypatch):
    path, spec = bundle
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` raise ImportError
    with pytest.raises(BackendUnavailable, match="pip install tokenizers"):
        ClipTokenizer.from_bundle(path, spec)


def test_runtime_module_is_torch_free(bundle):
    path, spec = bundle
    code = (
        "import sys, json; from ldm_runtime.tokenizer import ClipTokenizer; "
        f"t = ClipTokenizer.from_bundle({str(path)!r}, json.loads({json.dumps(spec)!r})); t.encode(['a cat']); "
        "bad = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- BERT WordPiece (diffusers' LDMTextToImagePipeline) -----------------------------------

from ldm_runtime.tokenizer import Tokenizer  # noqa: E402

BERT_MAX_LENGTH = 77  # LDMTextToImagePipeline passes the literal 77, not model_max_length
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_BERT_WORDS = (
    "a an the of on in with and photo painting cat dog horse mountain astronaut riding red blue green "
    "walk run jump play cafe naive resume paris the The Paris Cat New York 4k hi res 1990 "
    "中 文 日 本 ! ? , . ' - ( ) [ ]"
).split()
_BERT_PIECES = ["##s", "##es", "##ing", "##ed", "##er", "##ly", "##n", "##t", "##k", "##x"]

BERT_PROMPTS = [
    "",
    " ",
    "a photo of a cat",
    "A PHOTO OF A CAT",
    "a PhOtO oF a CaT",
    "The Cat in Paris",
    "  a  photo\tof\n\na   cat   ",
    "cats dogs horses walking jumped played riding",
    "a red cat, a blue dog; a green horse!",
    "hello!!! what?! (large) [small] {city} 'quoted' \"double\" - dash_underscore",
    "don't it's we're THE CAT'S",
    "café naïve résumé Ångström straße",  # uncased BERT strips accents
    "e\u0301 vs \u00e9",
    "zebra xylophone quixotic juxtaposition",  # unknown words -> [UNK]
    "中文 日本 中文字 한국어 русский",  # CJK characters are split one by one
    "🚀🐱 emoji astronaut 🐴",
    "0 1 12 4k 1990 1990s 3.14 hi-res",
    "[CLS] a cat [SEP] [MASK] [mask] [cls]",
    "\u200b zero width \u00a0 nbsp \x00 control \ufffd",
    " ".join(["a red cat riding a blue horse"] * 12),
    "astronaut " * 100,
    "x" * 500,  # longer than WordPiece's max_input_chars_per_word
]


def _write_bert_folder(folder: Path, *, lower: bool = True, model_max_length: int | None = 77,
                       layout: str = "saved", vocab: list[str] | None = None) -> Path:
    """A tiny BERT tokenizer: vocab.txt only (old layout) or saved by transformers 5."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True)
    vocab = vocab if vocab is not None else list(dict.fromkeys(
        _BERT_SPECIALS + list("abcdefghijklmnopqrstuvwxyz0123456789") + _BERT_WORDS + _BERT_PIECES))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    if layout == "vocab_only":
        return folder
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    # transformers 5: the vocabulary is the first argument (`vocab`, a dict or a vocab.txt path);
    # BertTokenizer(vocab_file=...) silently ignores the file and keeps only the 5 specials.
    tok = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=lower, **kwargs)
    assert len(tok) == len(vocab)
    saved = folder.parent / (folder.name + "-saved")
    tok.save_pretrained(str(saved))
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    saved.rename(folder)
    assert (folder / "tokenizer.json").is_file()
    return folder


def _bert_ref(folder: Path):
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(folder))


def _bert_ids(folder: Path, prompts: list[str], max_length: int = BERT_MAX_LENGTH) -> np.ndarray:
    ids = _bert_ref(folder)(prompts, padding="max_length", max_length=max_length, truncation=True).input_ids
    return np.asarray(ids, dtype=np.int64)


@pytest.fixture(
    scope="module",
    params=[(True, 77, "saved", None), (False, 77, "saved", None), (True, 512, "saved", 77),
            (True, None, "vocab_only", 77), (True, 16, "saved", None)],
    ids=["uncased-77", "cased-77", "uncased-512-as-ldm", "vocab-txt-only", "uncased-16"],
)
def bert_case(request, tmp_path_factory) -> tuple[Path, int | None, bool]:
    lower, model_max_length, layout, max_length = request.param
    folder = _write_bert_folder(tmp_path_factory.mktemp("bert") / "tokenizer", lower=lower,
                                model_max_length=model_max_length, layout=layout)
    return folder, max_length, lower


def _export_bert(folder: Path, out: Path, max_length: int | None) -> tuple[Tokenizer, dict]:
    spec = export_tokenizer(folder, out, kind="bert", max_length=max_length)
    assert json.loads(json.dumps(spec)) == spec  # manifest-safe
    return Tokenizer.from_bundle(out / spec["file"], spec), spec


def test_bert_ids_match_transformers(bert_case, tmp_path, caplog):
    folder, max_length, lower = bert_case
    ref = _bert_ref(folder)
    runtime, spec = _export_bert(folder, tmp_path / "bundle", max_length)
    assert list((tmp_path / "bundle").iterdir()) == [tmp_path / "bundle" / "tokenizer.json"]
    length = max_length if max_length is not None else ref.model_max_length
    assert spec == {
        "file": "tokenizer.json", "kind": "bert", "model_max_length": length,
        "pad_token_id": ref.pad_token_id, "bos_token_id": ref.cls_token_id, "eos_token_id": ref.sep_token_id,
        "do_lower_case": lower, "padding_side": "right", "truncation_side": "right",
        "split_special_tokens": False,
    }
    assert (spec["pad_token_id"], spec["bos_token_id"], spec["eos_token_id"]) == (0, 2, 3)

    with caplog.at_level(logging.WARNING, logger="ldm_runtime.tokenizer"):
        got = runtime.encode(BERT_PROMPTS)
    want = _bert_ids(folder, BERT_PROMPTS, length)
    assert got.dtype == np.int64 and got.shape == (len(BERT_PROMPTS), length)
    for prompt, g, w in zip(BERT_PROMPTS, got, want):
        assert g.tolist() == w.tolist(), prompt
    for i in (0, 4, len(BERT_PROMPTS) - 1):
        assert runtime.encode([BERT_PROMPTS[i]]).tolist() == [want[i].tolist()]
    assert runtime.encode(BERT_PROMPTS[2]).tolist() == [want[2].tolist()]  # a bare string is one prompt
    assert runtime.encode([]).shape == (0, length)
    assert got[0].tolist() == [2, 3] + [0] * (length - 2)  # [CLS] [SEP] [PAD]...
    assert all(row[0] == 2 for row in got)
    assert caplog.records and all("BERT can only handle" in r.getMessage() for r in caplog.records)

    unk = ref.unk_token_id
    vocab = ref.get_vocab()
    cat, cats = runtime.encode(["cat", "cats"])[:, 1:4].tolist()
    assert cat == [vocab["cat"], 3, 0] and cats == [vocab["cat"], vocab["##s"], 3]
    accents = runtime.encode(["café naïve résumé"])[0, 1:4].tolist()
    if lower:  # uncased BERT lowercases and strips accents
        assert accents == [vocab["cafe"], vocab["naive"], vocab["resume"]]
        assert runtime.encode(["A PHOTO"]).tolist() == runtime.encode(["a photo"]).tolist()
    else:  # cased BERT keeps both: "Cat" is its own token, accented words are unknown
        assert accents == [unk, unk, unk]
        assert runtime.encode(["Cat"])[0, 1] == vocab["Cat"] != vocab["cat"]
    assert runtime.encode(["zebra"])[0, 1:3].tolist() == [unk, 3]
    assert runtime.encode(["中文"])[0, 1:4].tolist() == [vocab["中"], vocab["文"], 3]


def test_bert_truncation_warning_names_dropped_words(tmp_path, caplog):
    folder = _write_bert_folder(tmp_path / "tokenizer")
    runtime, spec = _export_bert(folder, tmp_path / "bundle", BERT_MAX_LENGTH)
    fits = " ".join(["cat"] * (BERT_MAX_LENGTH - 2))
    long = fits + " walking dogs mountain"  # walk ##ing dog ##s mountain: 5 tokens over
    with caplog.at_level(logging.WARNING, logger="ldm_runtime.tokenizer"):
        ids = runtime.encode([fits])
    assert not caplog.records
    assert ids[0, -1] == spec["eos_token_id"]
    with caplog.at_level(logging.WARNING, logger="ldm_runtime.tokenizer"):
        ids = runtime.encode([long])
    assert ids.tolist() == _bert_ids(folder, [long]).tolist()
    assert ids[0, -1] == spec["eos_token_id"]
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "BERT can only handle sequences up to 77 tokens" in message
    assert "5 token(s) dropped" in message
    assert "'walking dogs mountain'" in message


def test_bert_tokenizer_json_only(tmp_path):
    folder = _write_bert_folder(tmp_path / "tokenizer")
    (folder / "vocab.txt").unlink(missing_ok=True)
    runtime, _ = _export_bert(folder, tmp_path / "bundle", None)
    assert runtime.encode(BERT_PROMPTS).tolist() == _bert_ids(folder, BERT_PROMPTS).tolist()


def test_clip_name_is_the_generic_tokenizer():
    assert ClipTokenizer is Tokenizer


def test_clip_folder_as_bert(tmp_path):
    folder = tmp_path / "tokenizer"
    write_clip_tokenizer(folder)
    with pytest.raises(UserError, match="is a CLIPTokenizer, not a BERT tokenizer") as info:
        export_tokenizer(folder, tmp_path / "out", kind="bert", max_length=77)
    assert "\n" not in str(info.value)
    (folder / "tokenizer_config.json").unlink()  # no class name to go by: the files tell
    with pytest.raises(UserError, match="not a BERT tokenizer"):
        export_tokenizer(folder, tmp_path / "out", kind="bert", max_length=77)
    from transformers import CLIPTokenizer

    saved = tmp_path / "saved"
    CLIPTokenizer.from_pretrained(str(folder)).save_pretrained(str(saved))
    (saved / "tokenizer_config.json").unlink()
    with pytest.raises(UserError, match="BPE model, not a BERT"):
        export_tokenizer(saved, tmp_path / "out", kind="bert", max_length=77)
    assert not (tmp_path / "out" / "tokenizer.json").exists()


def test_bert_folder_as_clip(tmp_path):
    folder = _write_bert_folder(tmp_path / "tokenizer")
    with pytest.raises(UserError, match="not a CLIP tokenizer"):
        export_tokenizer(folder, tmp_path / "out")


def test_bert_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no tokenizer folder"):
        export_tokenizer(tmp_path / "nope", tmp_path / "out", kind="bert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no usable tokenizer"):
        export_tokenizer(tmp_path / "empty", tmp_path / "out", kind="bert")

    old = _write_bert_folder(tmp_path / "old", layout="vocab_only")  # no config: no model_max_length
    with pytest.raises(UserError, match="model_max_length"):
        export_tokenizer(old, tmp_path / "out", kind="bert")
    for bad in (1, 0, True, "77", 10**9):
        with pytest.raises(UserError, match="max_length"):
            export_tokenizer(old, tmp_path / "out", kind="bert", max_length=bad)
    with pytest.raises(UserError, match="unknown tokenizer kind"):
        export_tokenizer(old, tmp_path / "out", kind="t5")

    no_unk = _write_bert_folder(tmp_path / "no_unk", layout="vocab_only", vocab=["[PAD]", "[CLS]", "[SEP]", "a"])
    with pytest.raises(UserError, match="unknown token") as info:
        export_tokenizer(no_unk, tmp_path / "out", kind="bert", max_length=77)
    assert "\n" not in str(info.value)

    corrupt = _write_bert_folder(tmp_path / "corrupt")
    (corrupt / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError) as info:
        export_tokenizer(corrupt, tmp_path / "out", kind="bert", max_length=77)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "tokenizer.json").exists()


def test_bundle_kind_must_match_the_file(bundle, tmp_path):
    clip_path, clip_spec = bundle
    with pytest.raises(BundleError, match="BPE model"):
        Tokenizer.from_bundle(clip_path, {**clip_spec, "kind": "bert"})
    folder = _write_bert_folder(tmp_path / "tokenizer")
    bert_spec = export_tokenizer(folder, tmp_path / "out", kind="bert", max_length=77)
    with pytest.raises(BundleError, match="WordPiece model"):
        Tokenizer.from_bundle(tmp_path / "out" / "tokenizer.json", {**bert_spec, "kind": "clip"})
    for kind in (None, "BERT", ["bert"]):
        with pytest.raises(BundleError, match="unsupported tokenizer kind"):
            Tokenizer.from_bundle(tmp_path / "out" / "tokenizer.json", {**bert_spec, "kind": kind})
