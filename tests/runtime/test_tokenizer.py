"""The runtime's CLIP tokenizer gives exactly transformers' ids (as diffusers calls it)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ldm_export.random_models import write_clip_tokenizer
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
