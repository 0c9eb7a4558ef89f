#!/usr/bin/env python
"""Samplers on the demo model: prompt adherence and seconds per image, DPM-Solver++ 2M at few steps vs DDIM at 50.

One run, through the torch-free runtime on one bundle: for every prompt × seed the configurations run one
after another (so background load hits them alike), each image is scored by the demo's analytic
adherence checker (docs/demo_model.md) and compared with the first configuration's image of the same
prompt and seed. Prints one table (median seconds per image, adherence, PSNR to the first configuration).

    ldm-export build --out /tmp/demo-fp32               # the embedded demo model, fp32 ONNX
    python benchmarks/bench_samplers.py /tmp/demo-fp32 --prompts 100 --seeds 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--configs", default="ddim:50,dpmpp-2m:20,dpmpp-2m:10",
                   help="sampler:steps, comma-separated; the first is the baseline of the PSNR column")
    p.add_argument("--backend", default=None)
    a = p.parse_args()

    from ldm_export.demo import GUIDANCE, adherence, shapes
    from ldm_runtime.bundle import open_bundle
    from ldm_runtime.metrics import psnr
    from ldm_runtime.pipeline import Components, Pipeline
    from ldm_runtime.request import Request

    configs = [(s, int(n)) for s, n in (c.split(":") for c in a.configs.split(","))]
    bundle = open_bundle(a.bundle)
    pipe = Pipeline(bundle, Components(bundle, backend=a.backend))
    prompts = shapes.eval_prompts(a.prompts)
    reps = [q for q in prompts for _ in range(a.seeds)]
    images: dict[tuple, list[np.ndarray]] = {c: [] for c in configs}
    seconds: dict[tuple, list[float]] = {c: [] for c in configs}
    pipe.generate(Request(prompt=prompts[0], steps=2, guidance_scale=GUIDANCE))  # warm-up
    start = time.perf_counter()
    for i, q in enumerate(prompts):
        for seed in range(a.seeds):
            for sampler, steps in configs:
                t = time.perf_counter()
                img = pipe.generate(Request(prompt=q, seed=seed, steps=steps, guidance_scale=GUIDANCE,
                                            sampler=sampler)).image
                seconds[(sampler, steps)].append(time.perf_counter() - t)
                images[(sampler, steps)].append(img)
        print(f"  {i + 1}/{len(prompts)} prompts", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    base = configs[0]
    print(f"# bench_samplers: {a.bundle}, {len(prompts)} prompts x {a.seeds} seeds, guidance {GUIDANCE}, "
          f"backend {pipe.components.backend}; {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores, load average at the end {os.getloadavg()[0]:.2f}, "
          f"{wall:.0f} s in all")
    print("| sampler | steps | colour | shape | colour+shape | position | overall | s / image (median) "
          f"| image dB vs {base[0]} {base[1]} (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        s = adherence.score(reps, images[c])
        d = [psnr(x, y, 255.0) for x, y in zip(images[c], images[base])]
        print(f"| {c[0]} | {c[1]} | " + " | ".join(f"{100 * s[k]:.1f} %" for k in
                                                   ("colour", "shape", "colour_shape", "position", "overall"))
              + f" | {statistics.median(seconds[c]):.3f} | {'-' if c == base else f'{statistics.median(d):.1f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
