"""Adapters: swapping a pack on the device vs rebuilding the bundle with the LoRA merged, pack size vs bundle
size, and ONNX Runtime's session re-creation cost (ratios from one run).

    python benchmarks/bench_adapters.py [--model tiny-sd|demo] [--out DIR]

The LoRA is a random one on the UNet's attention and the text encoder's (tests/models/lora.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the tests' model registry (tests/models) makes the model and the LoRA
    sys.path.insert(0, str(REPO))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-sd", choices=("tiny-sd", "demo"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from ldm_export.adapter_pack import write_pack
    from ldm_export.build import BuildConfig, build
    from ldm_export.demo import MODEL_DIR
    from ldm_runtime.bundle import open_bundle
    from ldm_runtime.pipeline import Components, Pipeline
    from ldm_runtime.runners import RunnerOptions
    from tests.models import make
    from tests.models.lora import TEXT_ATTENTION, make_lora

    root = args.out or Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    model = make("tiny-sd", root / "model") if args.model == "tiny-sd" else MODEL_DIR
    lora = make_lora(model, root / "lora.safetensors", seed=1, text_targets=TEXT_ATTENTION)
    build(BuildConfig(model=model, out=root / "base", overwrite=True))
    t = time.perf_counter()
    build(BuildConfig(model=model, out=root / "merged", loras=((lora.path, 1.0),), overwrite=True))
    rebuild = time.perf_counter() - t
    t = time.perf_counter()
    write_pack(root / "base", model, lora.path, root / "pack", overwrite=True)
    pack_time = time.perf_counter() - t

    bundle = open_bundle(root / "base")
    comps = Components(bundle, options=RunnerOptions(provider="cpu"))
    Pipeline(bundle, comps)
    comps.load_all()
    t = time.perf_counter()
    for r in comps._runners.values():   # session re-creation alone: the bundle's own weights
        r.release()
        r.load()
    recreate = time.perf_counter() - t
    t = time.perf_counter()
    comps.apply_adapters([(root / "pack", 1.0)])
    swap = time.perf_counter() - t
    pack, whole = _size(root / "pack"), _size(root / "base")
    rows = [("rebuild the bundle with the LoRA merged (ldm-export build --lora)", f"{rebuild:.2f} s"),
            ("write the adapter pack (ldm-export adapter, once, build side)", f"{pack_time:.2f} s"),
            ("swap the pack in on the device (ONNX Runtime, CPU)", f"{swap:.3f} s"),
            ("re-create every session without adapters (for comparison)", f"{recreate:.3f} s"),
            ("swap / rebuild", f"{swap / rebuild:.4f}"),
            ("pack size / bundle size", f"{pack / 1024:.1f} KiB / {whole / 2**20:.2f} MiB = {pack / whole:.4f}")]
    width = max(len(a) for a, _ in rows)
    print(f"model {args.model}")
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


if __name__ == "__main__":
    main()
