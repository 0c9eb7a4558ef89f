#!/usr/bin/env python
"""One component, several ONNX Runtime session-option variants (and torch eager), timed interleaved.

A tuning aid for bench_e2e.py: it times one component of a bundle (UNet by default, at the bundle's
default resolution, batch 2 as under classifier-free guidance) under each variant in turn, round
robin, so background load hits every variant alike; it reports the median per variant, the ratio to
the first one, each session's creation time, and the process RSS growth each session caused.

    python benchmarks/bench_component.py /work/bench-work/sd15/bundle-256 --variants default,nospin --runs 5
    python benchmarks/bench_component.py B --variants default --torch /work/bench-work/sd15/model
    python benchmarks/bench_component.py B --variants default --model-file other.onnx:label   # another graph

Variants (comma-separated): default (what ldm_runtime's runner does), nospin
(session.intra_op.allow_spinning=0), basic / extended / layout / all / none
(graph_optimization_level), noprepack (session.disable_prepacking=1), noarena (no CPU arena, no
memory pattern: the runner's low-memory options), lowmem (OnnxRuntimeRunner(low_memory=True)).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def session(path: str, variant: str, threads: int, spec: dict):
    """An InferenceSession for ``variant``; 'default' and 'lowmem' go through the runtime's own runner (which
    checks the graph's inputs and outputs against the component's manifest ``spec``)."""
    if variant in ("default", "lowmem"):
        from ldm_runtime.runners import RunnerOptions
        from ldm_runtime.runners.onnxruntime import OnnxRuntimeRunner

        r = OnnxRuntimeRunner("bench", Path(path), spec,
                              RunnerOptions(provider="cpu", threads=threads, low_memory=variant == "lowmem")).load()
        return r._session, r
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.log_severity_level = 3
    o.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "layout": getattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    }.get(variant, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if variant == "nospin":
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if variant == "noprepack":
        o.add_session_config_entry("session.disable_prepacking", "1")
    if variant == "noarena":
        o.enable_cpu_mem_arena = False
        o.enable_mem_pattern = False
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"]), None


def torch_unet(model_dir: str, threads: int):
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(threads)
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet").eval()

    def run(feeds):
        with torch.no_grad():
            return unet(torch.from_numpy(feeds["sample"]), torch.from_numpy(feeds["timestep"]),
                        encoder_hidden_states=torch.from_numpy(feeds["encoder_hidden_states"])).sample.numpy()

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--component", default="unet")
    p.add_argument("--variants", default="default,nospin")
    p.add_argument("--model-file", action="append", default=[],
                   help="PATH:LABEL, another ONNX file for the same component, run with the default options")
    p.add_argument("--torch", default=None, help="diffusers model folder: also time torch eager (UNet only)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--batch", type=int, default=2)
    a = p.parse_args()

    m = json.loads((Path(a.bundle) / "manifest.json").read_text())
    spec = m["components"][a.component]
    w, h = m["resolution"]["default"]
    f = m["latent"]["downsample_factor"]
    rng = np.random.default_rng(0)
    dims = {"batch": a.batch, "latent_height": h // f, "latent_width": w // f, "height": h, "width": w}
    feeds = {}
    for name, s in spec["inputs"].items():
        shape = [dims[d] if isinstance(d, str) else d for d in s["shape"]]
        if s["dtype"] == "int64":
            feeds[name] = rng.integers(0, 100, shape).astype(np.int64)
        elif name == "timestep":
            feeds[name] = np.full(shape, 500, np.float32)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    path = str(Path(a.bundle) / spec["file"])

    jobs = [(v, path, v) for v in a.variants.split(",") if v]
    jobs += [(label, file, "default") for file, label in (mf.rsplit(":", 1) for mf in a.model_file)]
    if a.torch:
        jobs.append(("torch", None, "torch"))
    runners, info = {}, {}
    for label, file, variant in jobs:
        before, t0 = rss(), time.perf_counter()
        if variant == "torch":
            fn = torch_unet(a.torch, a.threads)
        else:
            sess, keep = session(file, variant, a.threads, spec)
            names = [o.name for o in sess.get_outputs()]
            fn = (lambda s, n, k: (lambda fd: s.run(n, fd)[0]))(sess, names, keep)
        info[label] = {"create_s": time.perf_counter() - t0, "rss_growth": rss() - before}
        fn(feeds)  # warm-up (the first run allocates the arena and plans memory)
        info[label]["rss_after_run"] = rss() - before
        runners[label] = fn
        print(f"loaded {label}: {info[label]['create_s']:.1f} s, RSS +{info[label]['rss_growth'] / 2**20:.0f} MiB "
              f"(+{info[label]['rss_after_run'] / 2**20:.0f} MiB after one run)", flush=True)

    times = {v: [] for v in runners}
    outs = {}
    for i in range(a.runs):
        for v in (list(runners) if i % 2 == 0 else list(reversed(runners))):
            t0 = time.perf_counter()
            outs[v] = runners[v](feeds)
            times[v].append(time.perf_counter() - t0)
        print(f"run {i + 1}: " + ", ".join(f"{v} {times[v][-1]:.3f}" for v in runners), flush=True)
    first = next(iter(runners))
    ref = outs[first]
    print(f"\n{a.component}, batch {a.batch}, {w}x{h}, {a.threads} threads, median of {a.runs}:")
    for v in runners:
        md = statistics.median(times[v])
        rel = float(np.linalg.norm(outs[v] - ref) / np.linalg.norm(ref))
        print(f"  {v:<22} {md:8.3f} s  {md / statistics.median(times[first]):5.2f}x  "
              f"create {info[v]['create_s']:6.1f} s  RSS +{info[v]['rss_after_run'] / 2**20:6.0f} MiB  "
              f"rel L2 vs {first} {rel:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
