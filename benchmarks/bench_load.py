#!/usr/bin/env python
"""Load time: ldm_runtime's ONNX Runtime sessions cold, after ``ldm-run prepare``, and diffusers' ``from_pretrained``.

Each load happens in a fresh process (imports excluded: each child imports its library, then times only the
load), the three kinds interleaved over ``--repeats`` rounds so background load hits them alike; the table
gives the median per kind and the ratios to diffusers. The cache is written once before the rounds, into a
folder of its own (the bundle is not changed).

    python benchmarks/bench_load.py --model tiny --repeats 5
    python benchmarks/bench_load.py --model sd15 --resolution 256 --repeats 3 --work /work/bench-work
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import default_threads, model_dirs, table

CHILD = {
    "runtime": """
import json, sys, time
from ldm_runtime.bundle import open_bundle
from ldm_runtime.pipeline import Components
from ldm_runtime.runners import RunnerOptions
from pathlib import Path
bundle, cache, threads = sys.argv[1], (Path(sys.argv[2]) if sys.argv[2] else None), int(sys.argv[3])
b = open_bundle(bundle, check_hashes=False)
t0 = time.perf_counter()
Components(b, options=RunnerOptions(cache_dir=cache, threads=threads)).load_all()
print(json.dumps({"load_s": time.perf_counter() - t0}))
""",
    "diffusers": """
import json, sys, time
import torch
from diffusers import StableDiffusionPipeline
torch.set_num_threads(int(sys.argv[3]))
t0 = time.perf_counter()
StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False)
print(json.dumps({"load_s": time.perf_counter() - t0}))
""",
}


def load_once(kind: str, target: Path, cache: str, threads: int) -> float:
    code = CHILD["diffusers" if kind == "diffusers" else "runtime"]
    r = subprocess.run([sys.executable, "-c", code, str(target), cache, str(threads)], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["load_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ldm-bench-work"))
    a = p.parse_args()
    work = Path(a.work).resolve()
    model_dir, bundle_dir = model_dirs(work, a.model, a.resolution)
    if not (bundle_dir / "manifest.json").exists() or not (model_dir / ".complete").exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_e2e.py")), "--prepare", "--model",
                        a.model, "--work", str(work), "--resolution", str(a.resolution)], check=True)
    cache = work / a.model / f"ort-cache-{a.resolution}"
    subprocess.run([Path(sys.executable).with_name("ldm-run"), "prepare", str(bundle_dir), "--cache", str(cache)],
                   check=True)
    kinds = {"runtime, cold": (bundle_dir, ""), "runtime, after prepare": (bundle_dir, str(cache)),
             "diffusers": (model_dir, "")}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(a.repeats):
        order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
        for kind in order:
            target, c = kinds[kind]
            times[kind].append(load_once("diffusers" if kind == "diffusers" else "runtime", target, c, a.threads))
            print(f"  round {i + 1}/{a.repeats} {kind:<24} {times[kind][-1]:.3f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [["load (fresh process, imports excluded)", "median s", "min–max s", "/ diffusers"]]
    for k, v in times.items():
        rows.append([k, f"{med[k]:.3f}", f"{min(v):.3f}–{max(v):.3f}", f"{med[k] / med['diffusers']:.2f}x"])
    print(f"# bench_load: model {a.model}, bundle {bundle_dir}, {a.repeats} interleaved rounds, {a.threads} threads")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
