"""What the torch-free runtime tests read, made by the build side: bundles, and oracle values computed with
torch and transformers (so the runtime's own test run needs neither).

    python -m tests.fixtures OUT      # then: LDM_RUNTIME_FIXTURES=OUT pytest tests/runtime  (in a runtime-only venv)

In an ordinary test run the ``runtime_fixtures`` fixture (tests/conftest.py) builds the same into a temporary
folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TINY_SIZES = ((32, 32), (64, 48))
NOISE_SHAPES = [(1, 4, 64, 64), (2, 4, 32, 48), (1, 4, 8, 8), (3,), (2, 5), (17,), (1, 4, 5, 7), (1,)]
NOISE_SEEDS = [0, 42, 2**63 - 1, 2**32 + 5]
TOKENIZER_PROBES = ["", "a photo of a cat", "A PHOTO OF A CAT", "  a   photo\tof a cat  ", "café naïve 🚀 日本語",
                    "<|startoftext|> a cat <|endoftext|>", "don't it's THE CAT'S", " ".join(["a red circle"] * 12)]


def build_runtime_fixtures(out: Path, model: Path | None = None) -> Path:
    """Write ``out/tiny`` (an fp32 bundle of the tiny SD model at TINY_SIZES), ``out/nan_decoder.onnx``,
    ``out/noise.npz`` (torch.randn streams) and ``out/tokenizer_ids.json`` (transformers' ids of the probes
    with the tiny bundle's tokenizer)."""
    from ldm_export.build import BuildConfig, build
    from tests.models import make

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(model) if model is not None else make("tiny-sd", out / "tiny-model")
    build(BuildConfig(model=model, out=out / "tiny", resolutions=TINY_SIZES, overwrite=True))
    _nan_decoder(out / "nan_decoder.onnx")
    _noise_oracle(out / "noise.npz")
    _tokenizer_oracle(model / "tokenizer", out / "tokenizer_ids.json")
    (out / "fixtures.json").write_text(json.dumps({"model": str(model), "sizes": TINY_SIZES}))
    return out


def _nan_decoder(path: Path) -> None:
    """An ONNX 'decoder' whose output is always NaN (sqrt of a negative number)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", 4, "h", "w"])
    y = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4, "h", "w"])
    neg = helper.make_tensor("neg", TensorProto.FLOAT, [], [-1.0])
    nodes = [helper.make_node("Abs", ["latent"], ["a"]), helper.make_node("Mul", ["a", "neg"], ["b"]),
             helper.make_node("Sub", ["b", "neg"], ["c"]), helper.make_node("Sub", ["b", "c"], ["d"]),
             helper.make_node("Sqrt", ["d"], ["image"])]
    graph = helper.make_graph(nodes, "nan", [x], [y], initializer=[neg])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _noise_oracle(path: Path) -> None:
    """For each seed, successive ``torch.randn`` draws of NOISE_SHAPES from one generator (the stream a
    pipeline consumes), and the CPU capability torch ran them with."""
    import torch

    arrays = {}
    for seed in NOISE_SEEDS:
        g = torch.Generator().manual_seed(seed)
        for i, shape in enumerate(NOISE_SHAPES):
            arrays[f"{seed}/{i}"] = torch.randn(shape, generator=g, dtype=torch.float32).numpy()
    arrays["capability"] = np.array(torch.backends.cpu.get_cpu_capability())
    np.savez(path, **arrays)


def _tokenizer_oracle(tokenizer_dir: Path, path: Path) -> None:
    """transformers' ids of TOKENIZER_PROBES, called as diffusers calls it."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(TOKENIZER_PROBES, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    path.write_text(json.dumps({"probes": TOKENIZER_PROBES, "ids": ids}))


if __name__ == "__main__":
    print(build_runtime_fixtures(Path(sys.argv[1])))
