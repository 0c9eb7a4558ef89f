"""The runtime tokenizer, torch-free: the ids transformers gave for the same tokenizer (recorded by the build
side, tests/fixtures.py), the spec's checks, the truncation warning, corrupt files."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from ldm_runtime.bundle import open_bundle
from ldm_runtime.errors import BackendUnavailable, BundleError
from ldm_runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def bundle_tokenizer(tiny_bundle):
    m = open_bundle(tiny_bundle).manifest
    return tiny_bundle / m["tokenizer"]["file"], m["tokenizer"]


def test_ids_are_transformers_ids(bundle_tokenizer, runtime_fixtures, caplog):
    recorded = json.loads((runtime_fixtures / "tokenizer_ids.json").read_text())
    tok = Tokenizer.from_bundle(*bundle_tokenizer)
    with caplog.at_level(logging.ERROR, logger="ldm_runtime.tokenizer"):  # the long probe is truncated on purpose
        assert tok.encode(recorded["probes"]).tolist() == recorded["ids"]


def test_truncation_warns_once_per_prompt_in_one_short_line(bundle_tokenizer, caplog):
    tok = Tokenizer.from_bundle(*bundle_tokenizer)
    long = "a red circle " * 2000
    with caplog.at_level(logging.WARNING, logger="ldm_runtime.tokenizer"):
        tok.encode([long, long])
        tok.encode([long])
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and len(warnings[0]) < 300 and "\n" not in warnings[0]


@pytest.mark.parametrize("content", ["{not json", "", '{"model": 3}', "\xff\xfe garbage"])
def test_corrupt_tokenizer_json(bundle_tokenizer, tmp_path, content):
    bad = tmp_path / "tokenizer.json"
    bad.write_bytes(content.encode("latin-1"))
    with pytest.raises(BundleError) as info:
        Tokenizer.from_bundle(bad, bundle_tokenizer[1])
    assert "\n" not in str(info.value)


def test_missing_tokenizer_json(bundle_tokenizer, tmp_path):
    with pytest.raises(BundleError, match="missing"):
        Tokenizer.from_bundle(tmp_path / "tokenizer.json", bundle_tokenizer[1])


@pytest.mark.parametrize("change", [
    {"kind": "t5"}, {"model_max_length": None}, {"pad_token_id": -1}, {"eos_token_id": 10**9},
    {"model_max_length": "77"}, {"padding_side": "middle"}, {"kind": "bert"},
])
def test_bad_spec(bundle_tokenizer, change):
    path, spec = bundle_tokenizer
    with pytest.raises(BundleError):
        Tokenizer.from_bundle(path, {**spec, **change})


def test_tokenizers_missing(bundle_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` raise ImportError
    with pytest.raises(BackendUnavailable, match="pip install tokenizers"):
        Tokenizer.from_bundle(*bundle_tokenizer)
