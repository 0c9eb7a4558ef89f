"""A CLIP-format BPE tokenizer trained on a word list: the demo model's tokenizer (and the tests' tiny ones).

Greedy BPE (as CLIP's BPE was trained, on a tiny corpus): the 512 byte-level symbols (plain and
end-of-word ``</w>``), then the most frequent pair merged until ``max_merges`` (None: until every word
is one token), then ``<|startoftext|>`` and ``<|endoftext|>``. Text outside the word list falls back to
sub-word and byte tokens. Writes vocab.json, merges.txt and the transformers configs.
"""

from __future__ import annotations

import json
from pathlib import Path


# The CLIP byte-level alphabet: every byte maps to a printable unicode char.
def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_clip_tokenizer(folder: Path, words: list[str] | tuple[str, ...], *, model_max_length: int = 77,
                         pad_token: str = "<|endoftext|>", max_merges: int | None = None) -> None:
    """Write a small CLIP-format tokenizer (vocab.json, merges.txt, configs) to ``folder``.

    The merges are those a greedy BPE trainer learns on ``words`` (at most ``max_merges``;
    None: until every word is one token), so real multi-character tokens appear and
    prompts outside the list fall back to bytes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    while max_merges is None or len(merges) < max_merges:  # greedy BPE training on the word list
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(sorted(counts), key=lambda p: counts[p])
        merges.append(best)
        vocab.append(best[0] + best[1])
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append(out)
        words = new_words
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": pad_token,
    }))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": pad_token, "do_lower_case": True,
        "errors": "replace",
    }))
