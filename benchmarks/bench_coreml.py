#!/usr/bin/env python
"""Core ML target on Linux: conversion time and package size per component and precision, and the reference
evaluator's time per component; prints one table.

For each component of the model (the embedded demo model by default), at one size with batch 2 and 1
enumerated: one torch.export, then fp32 and fp16 ML Programs, then the fp16 program compressed three ways
(6-bit and 4-bit k-means palettization, int8 weights). Each package is loaded by the coreml-reference
evaluator and run ``--runs`` times at batch 2 (the UNet's batch under classifier-free guidance; the others
too, for comparability); PSNR is against fp32 torch on the same inputs (peak = max |torch|).

    python benchmarks/bench_coreml.py                      # the demo model at its default resolution
    python benchmarks/bench_coreml.py --model M --size 64x64 --components unet --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("fp32", "fp16", "6-bit", "4-bit", "int8")


def _packages(graph, sizes, work: Path) -> list[dict]:
    """Export once, convert fp32 and fp16, compress the fp16 program; one row per package."""
    from ldm_export.targets.coreml.compress import int8_weights, palettize
    from ldm_export.targets.coreml.convert import convert_component, export_component

    exported = export_component(graph, sizes)
    rows = [{"variant": "export", "seconds": exported.seconds}]
    for precision in ("fp32", "fp16"):
        path = work / f"{graph.name}_{precision}.mlpackage"
        t0 = time.perf_counter()
        convert_component(graph, sizes, precision=precision, out=path, exported=exported)
        rows.append({"variant": precision, "path": path, "seconds": time.perf_counter() - t0})
    fp16 = work / f"{graph.name}_fp16.mlpackage"
    for variant, compress in (("6-bit", lambda o: palettize(fp16, o, nbits=6)),
                              ("4-bit", lambda o: palettize(fp16, o, nbits=4)),
                              ("int8", lambda o: int8_weights(fp16, o))):
        path = work / f"{graph.name}_{variant}.mlpackage"
        t0 = time.perf_counter()
        compress(path)
        rows.append({"variant": variant, "path": path, "seconds": time.perf_counter() - t0})
    return rows


def _evaluate(row: dict, graph, feeds: dict, ref: dict, runs: int) -> None:
    from ldm_runtime.metrics import tensor_psnr
    from ldm_runtime.runners.coreml_reference.evaluate import evaluate
    from ldm_runtime.runners.coreml_reference.program import load_program

    t0 = time.perf_counter()
    program = load_program(row["path"], graph.name)
    row["load"] = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = evaluate(program, feeds)
        times.append(time.perf_counter() - t0)
    row["run"] = statistics.median(times)
    row["psnr"] = min(tensor_psnr(out[k], ref[k]) for k in ref)
    row["ops"] = len(program.op_types())


def _size(path: Path) -> tuple[float, float]:
    from ldm_export.targets.coreml.package import package_size, weights_size

    return package_size(path) / 2**20, weights_size(path) / 2**20


def _print(table: list[tuple[str, dict]]) -> None:
    print(f"{'component':<14}{'variant':<8}{'convert s':>10}{'package MB':>12}{'weights MB':>12}"
          f"{'op types':>9}{'eval load s':>12}{'eval run s':>11}{'PSNR dB':>9}")
    for name, row in table:
        if row["variant"] == "export":
            print(f"{name:<14}{'export':<8}{row['seconds']:>10.1f}")
            continue
        package, weights = _size(row["path"])
        print(f"{name:<14}{row['variant']:<8}{row['seconds']:>10.1f}{package:>12.3f}{weights:>12.3f}"
              f"{row['ops']:>9}{row['load']:>12.2f}{row['run']:>11.3f}{row['psnr']:>9.1f}")


def main(argv=None) -> None:
    from ldm_export.demo import MODEL_DIR
    from ldm_export.export import component_graphs, torch_outputs
    from ldm_export.loading import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(MODEL_DIR))
    p.add_argument("--size", default=None, help="WxH (default: the model's default resolution)")
    p.add_argument("--components", default=None, help="comma-separated (default: all)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", default=None, help="folder for the packages (default: a temporary one)")
    args = p.parse_args(argv)
    model = load_model(args.model)
    size = tuple(map(int, args.size.split("x"))) if args.size else model.default_resolution
    wanted = set(args.components.split(",")) if args.components else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        table = []
        for graph in component_graphs(model):
            if wanted and graph.name not in wanted:
                continue
            feeds = graph.make_inputs(2, *size, np.random.default_rng(0))
            ref = torch_outputs(graph, feeds)
            for row in _packages(graph, [size], work):
                if row["variant"] != "export":
                    _evaluate(row, graph, feeds, ref, args.runs)
                table.append((graph.name, row))
        print(f"model {args.model}, {size[0]}x{size[1]}, batch 2 and 1 enumerated; evaluator at batch 2, "
              f"median of {args.runs}; PSNR vs fp32 torch (peak = max |torch|)")
        _print(table)


if __name__ == "__main__":
    main()
