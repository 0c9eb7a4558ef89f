#!/usr/bin/env python
"""TensorRT against ONNX Runtime's CUDA provider on the same GPU, on one bundle.

NOT RUN YET: it needs an NVIDIA GPU, TensorRT's Python package, cuda-python and onnxruntime-gpu. The
machine this was written on has none of them (PyPI's ``tensorrt`` cannot be installed there), so it
has never been executed; no numbers from it exist in this repository.

One run prints, for each backend (``tensorrt``: the engines ``ldm-run prepare`` built for this GPU;
``ort-cuda``: the bundle's ONNX graphs in ONNX Runtime with ``CUDAExecutionProvider``):

* the UNet's seconds per DDIM step (median over the repeats);
* end-to-end seconds per image (text encoder, ``--steps`` UNet steps with classifier-free guidance,
  decoder; median over ``--repeats`` after one warm-up image);
* peak device memory in use during generation, above the idle level before the backend loaded
  (``cudaMemGetInfo`` polled every 2 ms by a thread; on Jetson this is the memory shared with the
  CPU, so other processes' use shows up too).

Each backend runs in a child process of its own, so one's CUDA context and allocator do not colour
the other's memory figure.

    ldm-run prepare BUNDLE                               # engines for this GPU, once
    python benchmarks/bench_tensorrt.py BUNDLE --steps 20 --repeats 5 [--low-memory]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

MARK = "@@BENCH "
PROMPT = "a red circle on the left of a blue square"


class DeviceMemoryPeak:
    """Polls cudaMemGetInfo in a thread; ``peak`` is the most memory in use seen, minus ``idle``."""

    def __init__(self, period: float = 0.002):
        from ldm_runtime.tensorrt import cuda

        self._info, self.period = cuda.mem_get_info, period
        free, total = self._info()
        self.idle, self.peak, self._stop = total - free, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            free, total = self._info()
            self.peak = max(self.peak, total - free - self.idle)
            time.sleep(self.period)

    def __enter__(self) -> "DeviceMemoryPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def components(bundle, backend: str, low_memory: bool):
    from ldm_runtime.pipeline import Components
    from ldm_runtime.runners import RunnerOptions

    if backend == "ort-cuda":
        return Components(bundle, backend="onnxruntime", options=RunnerOptions(provider="cuda", low_memory=low_memory))
    return Components(bundle, backend="tensorrt", options=RunnerOptions(low_memory=low_memory))


def worker(args: argparse.Namespace) -> None:
    from ldm_runtime.bundle import open_bundle
    from ldm_runtime.pipeline import Pipeline
    from ldm_runtime.request import Request

    bundle = open_bundle(args.bundle)
    memory = DeviceMemoryPeak()
    cfg = Request(prompt=PROMPT if bundle.has_text_encoder else "", steps=args.steps, seed=0,
                         guidance_scale=args.guidance)
    with memory:
        pipeline = Pipeline(bundle, components(bundle, args.worker, args.low_memory))
        pipeline.generate(cfg)                            # warm-up: engines/sessions load, kernels tune
        e2e, step = [], []
        for i in range(args.repeats):
            result = pipeline.generate(Request(**{**cfg.__dict__, "seed": i}))
            e2e.append(result.seconds["total"])
            step.append(result.seconds["unet"] / args.steps)
        pipeline.components.release_all()
    print(MARK + json.dumps({"backend": args.worker, "e2e_s": statistics.median(e2e),
                             "unet_step_s": statistics.median(step), "peak_device_bytes": memory.peak}), flush=True)


def run_child(args: argparse.Namespace, backend: str) -> dict:
    cmd = [sys.executable, __file__, str(args.bundle), "--worker", backend, "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--guidance", str(args.guidance)] + (["--low-memory"] * args.low_memory)
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(MARK)]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{backend} worker failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--low-memory", action="store_true")
    ap.add_argument("--backends", default="tensorrt,ort-cuda")
    ap.add_argument("--worker", choices=("tensorrt", "ort-cuda"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    rows = [run_child(args, b) for b in args.backends.split(",")]
    print(f"{'backend':<10} {'UNet s/step':>12} {'s/image':>9} {'peak device MiB':>16}")
    for r in rows:
        print(f"{r['backend']:<10} {r['unet_step_s']:>12.4f} {r['e2e_s']:>9.3f} {r['peak_device_bytes'] / 2**20:>16.0f}")
    if len(rows) == 2:
        print(f"TensorRT / ORT-CUDA: UNet step x{rows[1]['unet_step_s'] / rows[0]['unet_step_s']:.2f} faster, "
              f"image x{rows[1]['e2e_s'] / rows[0]['e2e_s']:.2f}")


if __name__ == "__main__":
    main()
