#!/usr/bin/env python
"""Calibration wall time on the local executor and on Ray with 1 and 2 workers, Ray's start-up cost, and
whether the three sets are byte-identical (one run each; ratios are what to read, not the seconds).

Each variant runs ``ldm-export calibrate``'s library call on the embedded demo model (``--samples``
trajectories × ``--steps`` DDIM steps, the demo's prompt set), the Ray ones each on a local cluster started
for the run (as ``--executor ray`` without ``--ray-address`` does), so their time includes the cluster's
start-up and every worker loading the model once. Measured apart: ``ray.init`` + ``ray.shutdown`` of an empty
local cluster, and a model load in this process (the first, with torch's and diffusers' imports, as a fresh
worker pays it; then a warm one, what the local run pays); the per-task cost is (local time − warm load) /
samples.

    python benchmarks/bench_executors.py --samples 32 --steps 10 --work /tmp/bench-executors --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-executors"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import os

    import ray

    from ldm_export.calibration import collect
    from ldm_export.demo import MODEL_DIR
    from ldm_export.loading import load_model
    from ldm_export.sweep import ExecutorConfig

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    kw = {"steps": args.steps, "samples": args.samples, "per_trajectory": 4}
    results = {"cpus": os.cpu_count(), "samples": args.samples, "steps": args.steps,
               "ray": ray.__version__}
    results["ray_start_s"] = _timed(lambda: (ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
                                                      log_to_driver=False), ray.shutdown()))
    results["first_load_s"] = _timed(lambda: load_model(MODEL_DIR))   # with the imports a fresh worker pays too
    results["model_load_s"] = _timed(lambda: load_model(MODEL_DIR))   # warm: what the local run pays
    variants = {"local": ExecutorConfig(), "ray_1": ExecutorConfig(kind="ray", workers=1),
                "ray_2": ExecutorConfig(kind="ray", workers=2)}
    for name, cfg in variants.items():
        results[f"{name}_s"] = _timed(lambda: collect(MODEL_DIR, args.work / name, executor=cfg, **kw))
        print(f"{name}: {results[f'{name}_s']:.1f} s", flush=True)
    ref = _files(args.work / "local")
    results["identical"] = {n: _files(args.work / n) == ref for n in variants}
    per_task = (results["local_s"] - results["model_load_s"]) / args.samples
    results["per_task_s"] = per_task
    print(json.dumps(results, indent=1))
    print(f"\nlocal {results['local_s']:.1f} s; Ray 1 worker {results['ray_1_s']:.1f} s "
          f"({results['ray_1_s'] / results['local_s']:.2f}× local); Ray 2 workers {results['ray_2_s']:.1f} s "
          f"({results['ray_2_s'] / results['local_s']:.2f}× local); Ray start-up {results['ray_start_s']:.1f} s; "
          f"per task {per_task:.2f} s; byte-identical: {results['identical']}")
    fixed = results["ray_2_s"] - per_task * args.samples / 2   # what 2 workers do not divide
    print(f"model: T(N workers) ≈ {fixed:.1f} s fixed (start-up, imports, one model load per worker, "
          f"assembly) + {args.samples} × {per_task:.3f} s / N")
    results["fixed_s"] = fixed
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
