#!/usr/bin/env python
"""int8 UNet against fp32 on ONNX Runtime CPU: step latency, size, session creation, peak RSS, one-step quality.

Four variants of one UNet are compared (``--layout`` restricts the int8 recipe to one layout):

* ``fp32``: the graph given with ``--fp32-unet`` (e.g. a bundle's ``unet.onnx``);
* ``int8 recipe``: ``ldm_export.quantize.int8(mode="static")`` with its defaults (MinMax calibration,
  Q/DQ on the inputs of Conv/ConvTranspose/Gemm/Linear-MatMul only, per-channel symmetric weights:
  the placement TensorRT's explicit quantization wants, docs/quantization.md);
* ``int8 recipe, ort-cpu layout``: the same with ``layout="ort-cpu"`` (the placement ORT's CPU provider
  runs as QLinearConv / MatMulIntegerToFloat: quantized Conv outputs, int32 biases, one Q/DQ pair per
  reader, uint8 activations, 7-bit weights);
* ``int8 naive``: what ``onnxruntime.quantization.quantize_static`` does with its defaults (every op
  type ORT can quantize, MinMax on every tensor, per-tensor weights, quantized outputs), built with
  ``benchmarks/demo_measure.py._naive_int8``.

Both int8 graphs are calibrated on the UNet records of a calibration set (``ldm-export calibrate``;
collected into ``--work`` when ``--calibration`` is not given) and built in ``--work``, each in a child
process (the fp32 UNet of SD 1.x is 3.4 GB; quantizing holds a few copies of it, and a child gives it all
back on exit). A graph is rebuilt only when it is missing or older than the fp32 graph or the calibration
set, so a rerun only measures.

Measured in one process, all variants loaded at once (``ORT_ENABLE_ALL``, ``intra_op_num_threads`` =
``--threads``, as ldm_runtime's runner sets them), after one warm-up call each:

* UNet step latency: one call at batch 2 (both classifier-free-guidance halves) on a real calibration
  record, ``--runs`` rounds, round robin with the order reversed every other round so background load
  on a shared machine hits every variant alike; median and min per variant, fp32/variant ratios;
* session creation seconds; size on disk (graph + external data) and its ratio to fp32;
* one-step quality against fp32 on ``--quality-feeds`` calibration records spread over the set (cosine,
  output PSNR, relative L2: ``ldm_export.quantize.output_metrics``). These are the records the int8
  graphs were calibrated on, and with random weights they say little about a trained model.

In fresh child processes (skip with ``--no-rss`` / ``--no-analysis``): peak RSS of loading each variant
and running one step (``os.wait4``'s ``ru_maxrss``); and what ONNX Runtime made of each graph: the op
types of the optimized graph (``SessionOptions.optimized_model_filepath``) and an ORT profile of two
steps, summed by op type — which ops run as int8 kernels and which stay float.

    python benchmarks/bench_quant.py --model M --fp32-unet B/unet.onnx --resolution 256x256 --runs 5 \\
        --work /work/bench-work/quant-sd15 --samples 2 --steps 8 --per-trajectory 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

VARIANTS = {"fp32": None, "int8 recipe": "unet_int8_recipe.onnx",
            "int8 recipe, ort-cpu layout": "unet_int8_ort-cpu.onnx", "int8 naive": "unet_int8_naive.onnx"}
KINDS = {"int8 recipe": "recipe", "int8 recipe, ort-cpu layout": "ort-cpu", "int8 naive": "naive"}
SPEEDUP_TARGET = 1.3    # issue 5: recipe int8 step >= 1.3x faster than fp32
SIZE_TARGET = 0.3       # and <= 0.3x its size


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def resolution(s: str) -> tuple[int, int]:
    w, _, h = s.lower().partition("x")
    return int(w), int(h or w)


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def mb(b: float) -> str:
    return f"{b / 1e6:.1f} MB"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]])


def sess_options(threads: int):
    """ldm_runtime's runner options: ORT_ENABLE_ALL, intra-op threads (common.session_options adds
    inter_op_num_threads = 1 and quiet logging)."""
    import onnxruntime as ort

    from ldm_export.quantize.common import session_options

    so = session_options(threads)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


# ----------------------------------------------------------------------------------------------------
# calibration set and int8 graphs, cached in --work


def calibration_set(a: argparse.Namespace, size: tuple[int, int]) -> Path:
    from ldm_export.calibration import collect, summary_line

    if a.calibration:
        path = Path(a.calibration)
    else:
        w, h = size
        path = a.work / f"calibration-{w}x{h}-s{a.steps}-k{a.samples}-p{a.per_trajectory}"
        if not (path / "calibration.json").exists():
            if a.model is None:
                sys.exit("no --calibration and no --model to collect one from")
            say(f"collecting a calibration set into {path} ({a.samples} trajectories of {a.steps} steps, "
                f"{a.per_trajectory} UNet records each, {w}x{h})")
            t0 = time.perf_counter()
            m = collect(Path(a.model), path, steps=a.steps, samples=a.samples, per_trajectory=a.per_trajectory,
                        width=w, height=h, seed=0, report=lambda m: say(f"  {m}"))
            say(f"  {summary_line(m, path)} ({time.perf_counter() - t0:.0f} s)")
    return path


def input_files(fp32: Path, calibration: Path) -> list[Path]:
    from ldm_export.onnx_io import external_data_files

    return [fp32, *external_data_files(fp32), calibration / "calibration.json"]


def fresh(out: Path, inputs: list[Path]) -> bool:
    """``out``, its external data and its build record exist and are newer than every input."""
    from ldm_export.onnx_io import external_data_files

    record = out.with_suffix(".build.json")
    if not (out.exists() and record.exists()):
        return False
    outs = [out, record, *external_data_files(out)]
    if not all(p.exists() for p in outs):
        return False
    return min(p.stat().st_mtime for p in outs) > max(p.stat().st_mtime for p in inputs)


def build(kind: str, fp32: Path, calibration: Path, out: Path, threads: int) -> dict:
    """Build ``out`` in a child process (written to a staging folder, moved in place when complete); returns
    the build record (also written beside ``out`` as ``<stem>.build.json``)."""
    staging = out.parent / f".building-{out.stem}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    spec = {"kind": kind, "fp32": str(fp32), "calibration": str(calibration), "out": str(staging / out.name),
            "threads": threads}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "_build", json.dumps(spec)])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"building the {kind} int8 UNet failed (exit {os.waitstatus_to_exitcode(status)}); "
                 f"partial output left in {staging}")
    record = json.loads((staging / "result.json").read_text())
    (staging / "result.json").unlink()
    for f in staging.iterdir():
        os.replace(f, out.parent / f.name)
    staging.rmdir()
    record.update({"wall_s": round(wall, 1), "peak_rss_bytes": usage.ru_maxrss * 1024})
    out.with_suffix(".build.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def build_child(spec: dict) -> None:
    """The child side of :func:`build`."""
    from bench_e2e import RssSampler  # this script's folder is on sys.path

    from ldm_export.calibration import CalibrationSet
    from ldm_export.quantize import calibrate, int8
    from demo_measure import _naive_int8

    feeds = CalibrationSet.open(spec["calibration"]).feeds("unet")
    out, threads = Path(spec["out"]), spec["threads"]
    record: dict = {"kind": spec["kind"], "fp32": spec["fp32"], "calibration": spec["calibration"],
                    "calibration_feeds": len(feeds)}
    sampler = RssSampler(period=0.05)
    t0 = time.perf_counter()
    if spec["kind"] in ("recipe", "ort-cpu"):
        layout = "ort-cpu" if spec["kind"] == "ort-cpu" else "tensorrt"
        say(f"int8 recipe ({layout} layout): calibrating (MinMax, the default) on {len(feeds)} records")
        sampler.set("calibrate")
        cal = calibrate(spec["fp32"], feeds, threads=threads, conv_outputs=layout == "ort-cpu")
        record["calibration_s"] = round(cal.seconds, 1)
        say(f"int8 recipe: calibrated in {cal.seconds:.0f} s; inserting Q/DQ")
        sampler.set("quantize+save")
        # feeds=[]: int8() would run fp32 and int8 over the feeds to fill vs_fp32; the benchmark measures that
        recipe = int8(spec["fp32"], out, [], mode="static", calibration=cal, threads=threads, layout=layout,
                      report=lambda m: say(f"  {m}"))
        ops = Counter(n["op_type"] for n in recipe["quantized_nodes"])
        record["recipe"] = {k: v for k, v in recipe.items()
                            if k not in ("quantized_nodes", "float_nodes", "activation_matmuls_float")}
        record["recipe"].update({"quantized_nodes_by_op": dict(ops),
                                 "activation_matmuls_float": len(recipe["activation_matmuls_float"])})
    else:
        say(f"int8 naive: calibrating every tensor (MinMax) on {len(feeds)} records, quantizing every op type")
        sampler.set("calibrate+quantize+save")
        _naive_int8(Path(spec["fp32"]), out, feeds, threads)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    record["peak_rss_by_phase_bytes"] = sampler.stop()
    (out.parent / "result.json").write_text(json.dumps(record, default=str))


# ----------------------------------------------------------------------------------------------------
# fresh-process probes: peak RSS, optimized graph and profile


def probe(mode: str, path: Path, feed_file: Path, threads: int, work: Path) -> dict:
    spec = {"mode": mode, "path": str(path), "feed": str(feed_file), "threads": threads, "work": str(work)}
    result = work / f".probe-{os.getpid()}.json"
    spec["result"] = str(result)
    proc = subprocess.Popen([sys.executable, __file__, "_probe", json.dumps(spec)])
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": f"exit {os.waitstatus_to_exitcode(status)}"}
    out = json.loads(result.read_text())
    result.unlink()
    out["peak_rss_bytes"] = usage.ru_maxrss * 1024
    return out


def probe_child(spec: dict) -> None:
    import onnxruntime as ort

    feed = dict(np.load(spec["feed"]))
    so = sess_options(spec["threads"])
    out: dict = {}
    if spec["mode"] == "rss":
        t0 = time.perf_counter()
        s = ort.InferenceSession(spec["path"], so, providers=["CPUExecutionProvider"])
        out["create_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        s.run(None, feed)
        out["first_run_s"] = time.perf_counter() - t0
    else:
        import onnx

        opt_dir = Path(spec["work"]) / f".optimized-{os.getpid()}"
        opt_dir.mkdir(exist_ok=True)
        opt = opt_dir / "optimized.onnx"
        so.optimized_model_filepath = str(opt)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        so.enable_profiling = True
        so.profile_file_prefix = str(opt_dir / "profile")
        s = ort.InferenceSession(spec["path"], so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            s.run(None, feed)
        events = json.loads(Path(s.end_profiling()).read_text())
        proto = onnx.load(str(opt), load_external_data=False)
        out["optimized_ops"] = dict(Counter(
            (n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain.split('.')[-1]}:{n.op_type}")
            for n in proto.graph.node).most_common())
        out["optimized_op_types"] = dict(Counter(n.op_type for n in proto.graph.node).most_common())
        out["profile"] = profile_by_op(events, skip_runs=1)
        shutil.rmtree(opt_dir, ignore_errors=True)
    Path(spec["result"]).write_text(json.dumps(out))


def profile_by_op(events: list[dict], skip_runs: int) -> dict:
    """Kernel time per op type (ms per run), over the runs after the first ``skip_runs``."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    kept = runs[skip_runs:]
    per_op: Counter = Counter()
    count: Counter = Counter()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(a <= e["ts"] <= b for a, b in kept):
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_op[op] += e["dur"]
        count[op] += 1
    n = max(len(kept), 1)
    total = sum(per_op.values())
    return {"runs": len(kept), "model_run_ms": [round((b - a) / 1000, 1) for a, b in kept],
            "kernel_ms": round(total / 1000 / n, 1),
            "by_op": {op: {"ms": round(us / 1000 / n, 1), "share": round(us / total, 4), "nodes": count[op] // n}
                      for op, us in per_op.most_common()}}


# ----------------------------------------------------------------------------------------------------
# the measurement


def measure(paths: dict[str, Path], lat_feed: dict, quality_feeds: list[dict], runs: int, threads: int) -> dict:
    import onnxruntime as ort
    import psutil

    from ldm_export.quantize import output_metrics

    proc = psutil.Process()
    sessions, info = {}, {}
    for k, p in paths.items():
        before, t0 = proc.memory_info().rss, time.perf_counter()
        sessions[k] = ort.InferenceSession(str(p), sess_options(threads), providers=["CPUExecutionProvider"])
        create = time.perf_counter() - t0
        t0 = time.perf_counter()
        sessions[k].run(None, lat_feed)  # warm-up: the first run allocates the arena and plans memory
        info[k] = {"create_s": create, "first_run_s": time.perf_counter() - t0,
                   "rss_growth_bytes": proc.memory_info().rss - before}
        say(f"loaded {k}: created in {create:.1f} s, first run {info[k]['first_run_s']:.1f} s, "
            f"RSS +{gib(info[k]['rss_growth_bytes'])}")

    say(f"one-step quality on {len(quality_feeds)} calibration records")
    outs: dict[str, list] = {k: [] for k in paths}
    for f in quality_feeds:
        for k, s in sessions.items():
            outs[k].append({o.name: v for o, v in zip(s.get_outputs(), s.run(None, f))})
    quality = {}
    for k in paths:
        m = output_metrics(outs["fp32"], outs[k])
        m["per_feed_cosine"] = [output_metrics([r], [g])["cosine"] for r, g in zip(outs["fp32"], outs[k])]
        quality[k] = m

    say(f"latency: {runs} interleaved rounds, one batch-2 step per variant per round")
    times: dict[str, list[float]] = {k: [] for k in paths}
    for i in range(runs):
        order = list(sessions) if i % 2 == 0 else list(reversed(sessions))
        for k in order:
            t0 = time.perf_counter()
            sessions[k].run(None, lat_feed)
            times[k].append(time.perf_counter() - t0)
        say(f"  round {i + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in sessions))
    for k in list(sessions):
        del sessions[k]
    return {"sessions": info, "quality": quality, "times": times}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_build"]:
        build_child(json.loads(argv[1]))
        return 0
    if argv[:1] == ["_probe"]:
        probe_child(json.loads(argv[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers model folder (to collect a calibration set when --calibration is absent)")
    p.add_argument("--fp32-unet", required=True, type=Path, help="fp32 unet.onnx (e.g. a bundle's)")
    p.add_argument("--calibration", help="an existing calibration set (ldm-export calibrate)")
    p.add_argument("--resolution", default="256x256", help="WxH of the calibration records (default 256x256)")
    p.add_argument("--samples", type=int, default=2, help="trajectories, when collecting (default 2)")
    p.add_argument("--steps", type=int, default=8, help="DDIM steps per trajectory, when collecting (default 8)")
    p.add_argument("--per-trajectory", type=int, default=4, help="UNet records per trajectory (default 4)")
    p.add_argument("--runs", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    p.add_argument("--quality-feeds", type=int, default=4, help="calibration records for the quality columns")
    p.add_argument("--work", type=Path, required=True, help="folder for the calibration set and int8 graphs")
    p.add_argument("--no-rss", action="store_true", help="skip the fresh-process peak RSS probes")
    p.add_argument("--no-analysis", action="store_true", help="skip the optimized-graph op counts and ORT profiles")
    p.add_argument("--layout", choices=["tensorrt", "ort-cpu", "both"], default="both",
                   help="int8 recipe layout(s) to compare (default both, in one interleaved run)")
    p.add_argument("--json", type=Path, help="write every measurement here")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    a.work.mkdir(parents=True, exist_ok=True)
    size = resolution(a.resolution)
    fp32 = a.fp32_unet.resolve()

    from ldm_export.calibration import CalibrationSet
    from ldm_export.onnx_io import model_size_bytes

    cal_path = calibration_set(a, size)
    cs = CalibrationSet.open(cal_path)
    if tuple(cs.manifest["resolution"]) != size:
        sys.exit(f"calibration set {cal_path} is at {cs.manifest['resolution']}, not {a.resolution}")
    feeds = cs.feeds("unet")
    say(f"calibration set {cal_path}: {len(feeds)} UNet records, timesteps "
        f"{[t for tr in cs.manifest['trajectories'] for t in tr['timesteps']]}")

    paths: dict[str, Path] = {}
    builds: dict[str, dict] = {}
    inputs = input_files(fp32, cal_path)
    skip = {"tensorrt": {"int8 recipe, ort-cpu layout"}, "ort-cpu": {"int8 recipe"}}.get(a.layout, set())
    for k, name in VARIANTS.items():
        if k in skip:
            continue
        if name is None:
            paths[k] = fp32
            continue
        out = (a.work / name).resolve()
        if fresh(out, inputs):
            builds[k] = json.loads(out.with_suffix(".build.json").read_text())
            builds[k]["reused"] = True
            say(f"{k}: reusing {out} (built in {builds[k]['wall_s']} s)")
        else:
            say(f"{k}: building {out}")
            builds[k] = build(KINDS[k], fp32, cal_path, out, a.threads)
            say(f"{k}: built in {builds[k]['wall_s']} s, child peak RSS {gib(builds[k]['peak_rss_bytes'])}")
        paths[k] = out
    sizes = {k: model_size_bytes(p) for k, p in paths.items()}

    idx = len(feeds) // 2
    lat_feed = feeds[idx]
    q_idx = sorted(set(np.linspace(0, len(feeds) - 1, min(a.quality_feeds, len(feeds))).round().astype(int).tolist()))
    feed_file = a.work / "latency_feed.npz"
    np.savez(feed_file, **lat_feed)

    probes: dict[str, dict] = {k: {} for k in paths}
    if not a.no_rss:
        for k, pth in paths.items():
            say(f"peak RSS probe (fresh process, load + one step): {k}")
            probes[k]["rss"] = probe("rss", pth, feed_file, a.threads, a.work)

    say(f"measuring: {a.threads} threads, latency feed = record {idx} (timestep "
        f"{float(lat_feed['timestep'][0]):g}), quality records {q_idx}")
    res = measure(paths, lat_feed, [feeds[i] for i in q_idx], a.runs, a.threads)

    if not a.no_analysis:
        for k, pth in paths.items():
            say(f"optimized graph and ORT profile (fresh process): {k}")
            probes[k]["analysis"] = probe("analysis", pth, feed_file, a.threads, a.work)

    # ------------------------------------------------------------------------------------ report
    t = res["times"]
    med = {k: statistics.median(v) for k, v in t.items()}
    mn = {k: min(v) for k, v in t.items()}
    rows = [["variant", "step median (s)", "step min (s)", "fp32/variant (median)", "fp32/variant (min)",
             "size", "size / fp32", "session create (s)", "peak RSS load+step", "cosine", "PSNR (dB)",
             "rel L2", "min per-record cosine"]]
    for k in paths:
        q = res["quality"][k]
        rss = probes[k].get("rss", {}).get("peak_rss_bytes")
        rows.append([k, f"{med[k]:.3f}", f"{mn[k]:.3f}", f"{med['fp32'] / med[k]:.2f}x", f"{mn['fp32'] / mn[k]:.2f}x",
                     mb(sizes[k]), f"{sizes[k] / sizes['fp32']:.3f}x", f"{res['sessions'][k]['create_s']:.1f}",
                     gib(rss) if rss else "-", f"{q['cosine']:.4f}" if q["cosine"] is not None else "nan",
                     q["psnr_db"], f"{q['rel_l2']:.4f}" if q["rel_l2"] is not None else "-",
                     f"{min(c for c in q['per_feed_cosine'] if c is not None):.4f}"])
    print(f"\nUNet step, batch 2, {size[0]}x{size[1]} ({size[1] // 8}x{size[0] // 8} latents), ORT CPU, "
          f"{a.threads} threads, {a.runs} interleaved rounds; quality over {len(q_idx)} calibration records\n")
    print(table(rows))
    criterion = {}
    for k in ("int8 recipe", "int8 recipe, ort-cpu layout"):
        if k not in paths:
            continue
        speed = med["fp32"] / med[k]
        rel = sizes[k] / sizes["fp32"]
        criterion[k] = {"speedup": speed, "speedup_target": SPEEDUP_TARGET, "speedup_met": speed >= SPEEDUP_TARGET,
                        "size": rel, "size_target": SIZE_TARGET, "size_met": rel <= SIZE_TARGET}
        print(f"\nissue 5 criterion 4, {k}: speed-up {speed:.2f}x (target >= {SPEEDUP_TARGET}x: "
              f"{'met' if speed >= SPEEDUP_TARGET else 'NOT met'}); size {rel:.3f}x (target <= {SIZE_TARGET}x: "
              f"{'met' if rel <= SIZE_TARGET else 'NOT met'})")
    for k in paths:
        b = builds.get(k)
        if b:
            line = f"build {k}: {b['wall_s']} s{' (reused)' if b.get('reused') else ''}, child peak RSS "
            line += gib(b["peak_rss_bytes"])
            if "calibration_s" in b:
                line += f", calibration {b['calibration_s']} s"
            if b.get("peak_rss_by_phase_bytes"):
                line += "; peak RSS by phase: " + ", ".join(f"{ph} {gib(v)}"
                                                             for ph, v in b["peak_rss_by_phase_bytes"].items())
            print(line)

    if not a.no_analysis:
        print("\nwhat ORT runs (optimized graph op counts; kernel ms per step from an ORT profile of 2 steps)\n")
        ops = sorted({op for k in paths for op in probes[k]["analysis"].get("profile", {}).get("by_op", {})},
                     key=lambda op: -max(probes[k]["analysis"]["profile"]["by_op"].get(op, {}).get("ms", 0)
                                         for k in paths if "profile" in probes[k]["analysis"]))
        rows = [["op type"] + [f"{k}: nodes" for k in paths] + [f"{k}: ms/step" for k in paths]]
        for op in ops:
            cells_n, cells_ms = [], []
            for k in paths:
                an = probes[k]["analysis"]
                cells_n.append(an.get("optimized_op_types", {}).get(op, ""))
                cells_ms.append(an.get("profile", {}).get("by_op", {}).get(op, {}).get("ms", ""))
            rows.append([op] + [str(c) for c in cells_n] + [str(c) for c in cells_ms])
        rows.append(["(all kernels)"] + [""] * len(paths)
                    + [str(probes[k]["analysis"].get("profile", {}).get("kernel_ms", "")) for k in paths])
        print(table(rows))
    wall = time.perf_counter() - t_start
    print(f"\nwall time {wall:.0f} s")

    if a.json:
        a.json.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "calibration": {"path": str(cal_path), "records": len(feeds), "summary": cs.summary()},
            "latency_record": idx, "quality_records": q_idx,
            "paths": {k: str(v) for k, v in paths.items()}, "size_bytes": sizes,
            "size_vs_fp32": {k: sizes[k] / sizes["fp32"] for k in paths},
            "step_seconds": t, "median_s": med, "min_s": mn,
            "speedup_median": {k: med["fp32"] / med[k] for k in paths},
            "speedup_min": {k: mn["fp32"] / mn[k] for k in paths},
            "sessions": res["sessions"], "quality": res["quality"], "builds": builds, "probes": probes,
            "criterion": criterion,
            "wall_s": wall,
        }, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
