"""Measure the recipes on the embedded demo model (the numbers in docs/quantization.md).

    python benchmarks/demo_measure.py --work /tmp/quant-demo [--threads 1] [--json out.json]

Exports the demo model's components to fp32 ONNX, records real component inputs along DDIM trajectories of
the diffusers pipeline (UNet: batch 2, both classifier-free-guidance halves, every step), calibrates on
one set of prompts and evaluates on another, and prints one table per component. Latency is ORT CPU
(``intra_op_num_threads`` = ``--threads``), all variants timed interleaved in one process, median of
``--repeats`` rounds. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ldm_export.demo import GUIDANCE as DEMO_GUIDANCE
from ldm_export.demo import MODEL_DIR as DEMO_MODEL


CALIBRATION_PROMPTS = [
    "a red circle", "a green square on the left", "a blue triangle on the right",
    "a red circle above a blue square", "a yellow triangle to the left of a green circle",
    "a large yellow circle at the top",
]
EVALUATION_PROMPTS = [
    "a small red square at the bottom", "a green triangle in the center",
    "a large blue square below a small yellow circle", "a green circle to the right of a red triangle",
]


def collect_feeds(model_dir: Path, prompts: list[str], *, steps: int = 20, guidance: float = DEMO_GUIDANCE,
                  seed: int = 0) -> dict[str, list[dict[str, np.ndarray]]]:
    """Real inputs of every component while the diffusers pipeline generates one image per prompt."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), torch_dtype=torch.float32, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    feeds: dict[str, list] = {"text_encoder": [], "unet": [], "vae_decoder": []}

    def on_text(_m, args, kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        feeds["text_encoder"].append({"input_ids": ids.numpy().astype(np.int64)})

    def on_unet(_m, args, kwargs):
        sample, t = args[0], args[1] if len(args) > 1 else kwargs["timestep"]
        feeds["unet"].append({"sample": sample.numpy().copy(),
                              "timestep": np.full((sample.shape[0],), float(t), dtype=np.float32),
                              "encoder_hidden_states": kwargs["encoder_hidden_states"].numpy().copy()})

    hooks = [pipe.text_encoder.register_forward_pre_hook(on_text, with_kwargs=True),
             pipe.unet.register_forward_pre_hook(on_unet, with_kwargs=True)]
    decode = pipe.vae.decode

    def record_decode(z, *a, **k):
        feeds["vae_decoder"].append({"latent": z.numpy().copy()})
        return decode(z, *a, **k)

    pipe.vae.decode = record_decode
    try:
        with torch.no_grad():
            for i, p in enumerate(prompts):
                pipe(prompt=p, num_inference_steps=steps, guidance_scale=guidance,
                     generator=torch.Generator().manual_seed(seed + i), output_type="np")
    finally:
        for h in hooks:
            h.remove()
        del pipe.vae.decode
    return feeds


def export_demo(model_dir: Path, out: Path) -> dict[str, Path]:
    """fp32 ONNX of every demo component, as ``ldm-export build`` writes them."""
    from ldm_export.export import component_graphs, export_onnx
    from ldm_export.loading import load_model

    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_dir, None, None, {})
    paths = {}
    for g in component_graphs(model):
        if not (out / f"{g.name}.onnx").exists():
            export_onnx(g, out, model.default_resolution)
        paths[g.name] = out / f"{g.name}.onnx"
    return paths


def ddim_images(unet, decoder: Path, feeds: list[dict], steps: int, guidance: float, scaling: float,
                scheduler_config: dict, threads: int) -> list[np.ndarray]:
    """Re-run each recorded trajectory's sampling loop with ``unet`` (an ONNX file) from its recorded start
    latents and conditioning; decode with the fp32 decoder. Images in [0, 1]."""
    import torch
    from diffusers import DDIMScheduler

    from ldm_export.quantize.common import Session

    images = []
    with Session(unet, threads) as u, Session(decoder, threads) as d:
        for start in range(0, len(feeds), steps):
            f0 = feeds[start]
            sched = DDIMScheduler.from_config(scheduler_config)
            sched.set_timesteps(steps)
            latents = torch.from_numpy(f0["sample"][:1].copy())
            for t in sched.timesteps:
                x = np.concatenate([latents.numpy()] * 2)
                eps = u.run({"sample": x, "timestep": np.full((2,), float(t), np.float32),
                             "encoder_hidden_states": f0["encoder_hidden_states"]})["model_output"]
                e = eps[:1] + guidance * (eps[1:] - eps[:1])
                latents = sched.step(torch.from_numpy(e), t, latents).prev_sample
            img = d.run({"latent": (latents / scaling).numpy()})["image"]
            images.append(np.clip(img / 2 + 0.5, 0, 1))
    return images


def _latency(paths: dict[str, Path], feed: dict, threads: int, repeats: int, calls: int) -> dict[str, float]:
    """Median seconds per call of every model, timed interleaved (round-robin) so background load hits all."""
    from ldm_export.quantize.common import Session

    sessions = {k: Session(p, threads) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for s in sessions.values():
        for _ in range(3):
            s.run(feed)
    for _ in range(repeats):
        for k, s in sessions.items():
            t = time.perf_counter()
            for _ in range(calls):
                s.run(feed)
            times[k].append((time.perf_counter() - t) / calls)
    for s in sessions.values():
        s.close()
    return {k: statistics.median(v) for k, v in times.items()}


def _naive_int8(src: Path, out: Path, feeds, threads: int):
    """What ``quantize_static`` does with its defaults: every op type it knows, MinMax, per-tensor weights,
    asymmetric activations, quantized outputs and int32 biases."""
    from onnxruntime.quantization import QDQQuantizer, QuantType

    from ldm_export.onnx_io import save
    from ldm_export.quantize.calibrate import _typed_model, calibrate

    cal = calibrate(src, feeds, method="minmax", every_op=True, threads=threads)
    typed = _typed_model(src)
    q = QDQQuantizer(typed, False, False, QuantType.QInt8, QuantType.QInt8, cal.ranges, [], [], _all_qdq_ops(), {})
    save(q.quantize_model(), out)


def _all_qdq_ops() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def main(argv=None) -> int:
    from ldm_export.onnx_io import model_size_bytes
    from ldm_export.quantize import calibrate, fp16, int8, mixed, output_metrics, run_onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEMO_MODEL)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=DEMO_GUIDANCE)
    ap.add_argument("--calibration-stride", type=int, default=2, help="use every n-th recorded UNet call")
    ap.add_argument("--mixed-target", type=float, default=40.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = args.work
    import torch

    torch.set_num_threads(args.threads)
    say = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)
    paths = export_demo(args.model, work / "fp32")
    say("recording component inputs along DDIM trajectories")
    cal = collect_feeds(args.model, CALIBRATION_PROMPTS, steps=args.steps, guidance=args.guidance, seed=0)
    ev = collect_feeds(args.model, EVALUATION_PROMPTS, steps=args.steps, guidance=args.guidance, seed=100)
    sched_cfg = json.loads((args.model / "scheduler" / "scheduler_config.json").read_text())
    scaling = json.loads((args.model / "vae" / "config.json").read_text())["scaling_factor"]
    result: dict = {"threads": args.threads, "calibration_prompts": CALIBRATION_PROMPTS,
                    "evaluation_prompts": EVALUATION_PROMPTS, "steps": args.steps, "guidance": args.guidance}

    # ---------------------------------------------------------------- UNet
    unet = paths["unet"]
    cal_u = cal["unet"][::args.calibration_stride]
    ev_u = ev["unet"]
    variants: dict[str, Path] = {"fp32": unet}
    recipes: dict[str, dict] = {}
    say(f"UNet fp16 (scan on {len(cal_u[::3])} feeds)")
    recipes["fp16 (scan)"] = fp16(unet, work / "unet_fp16.onnx", cal_u[::3], threads=args.threads)
    variants["fp16 (scan)"] = work / "unet_fp16.onnx"
    cals = {}
    for name, method, pct in [("minmax", "minmax", None), ("percentile 99.99", "percentile", 99.99),
                              ("percentile 99.999", "percentile", 99.999), ("entropy", "entropy", None)]:
        say(f"UNet int8 static, calibration {name} on {len(cal_u)} feeds")
        c = calibrate(unet, cal_u, method=method, percentile=pct or 99.99, threads=args.threads)
        cals[name] = c
        key = f"int8 static ({name})"
        out = work / f"unet_int8_{name.replace(' ', '_')}.onnx"
        recipes[key] = int8(unet, out, cal_u[:2], calibration=c, threads=args.threads)
        variants[key] = out
    say("UNet naive int8 (quantize_static defaults: all op types, MinMax, per-tensor)")
    _naive_int8(unet, work / "unet_int8_naive.onnx", cal_u, args.threads)
    variants["naive int8 (all ops, MinMax)"] = work / "unet_int8_naive.onnx"
    say(f"UNet mixed int8/fp32, target {args.mixed_target} dB")
    key = f"mixed int8/fp32 (target {args.mixed_target:g} dB)"
    recipes[key] = mixed(unet, work / "unet_mixed.onnx", cal_u, target_psnr=args.mixed_target,
                         calibration=cals["minmax"], threads=args.threads)
    variants[key] = work / "unet_mixed.onnx"

    say("UNet: accuracy on held-out prompts")
    ref = run_onnx(unet, ev_u, threads=args.threads)
    ref_img = ddim_images(unet, paths["vae_decoder"], ev_u, args.steps, args.guidance, scaling, sched_cfg,
                          args.threads)
    rows = {}
    for k, p in variants.items():
        got = run_onnx(p, ev_u, threads=args.threads)
        img = ddim_images(p, paths["vae_decoder"], ev_u, args.steps, args.guidance, scaling, sched_cfg,
                          args.threads)
        im = output_metrics(ref_img, img)
        rows[k] = {"call": output_metrics(ref, got), "image_psnr_db": im["psnr_db"],
                   "image_max_abs_255": None if im["max_abs"] is None else round(im["max_abs"] * 255, 1),
                   "size_bytes": model_size_bytes(p)}
    say(f"UNet: latency, {args.repeats} interleaved rounds of {args.calls} calls, {args.threads} thread(s)")
    lat = _latency(variants, ev_u[len(ev_u) // 2], args.threads, args.repeats, args.calls)
    big = {"sample": np.random.default_rng(0).standard_normal((2, 8, 64, 64)).astype(np.float32),
           "timestep": np.array([500.0, 500.0], np.float32), "encoder_hidden_states": ev_u[0]["encoder_hidden_states"]}
    say("UNet: latency at 64x64 latents (compute-bound)")
    lat_big = _latency(variants, big, args.threads, max(3, args.repeats // 2), 2)
    for k, row in rows.items():
        row["latency_ms"] = round(lat[k] * 1000, 3)
        row["latency_64x64_ms"] = round(lat_big[k] * 1000, 1)
    result["unet"] = {"rows": rows, "feeds": {"calibration": len(cal_u), "evaluation": len(ev_u)},
                      "recipes": recipes}
    print(_table(rows, "UNet (batch 2, 8x8 latents)"))

    # ---------------------------------------------------------------- text encoder
    te = paths["text_encoder"]
    tv = {"fp32": te}
    trec = {}
    for mode in ("weight_only", "dynamic", "static"):
        out = work / f"text_encoder_int8_{mode}.onnx"
        trec[mode] = int8(te, out, cal["text_encoder"], mode=mode, threads=args.threads)
        tv[f"int8 {mode}"] = out
    tref = run_onnx(te, ev["text_encoder"], threads=args.threads)
    trows = {k: {"call": output_metrics(tref, run_onnx(p, ev["text_encoder"], threads=args.threads)),
                 "size_bytes": model_size_bytes(p)} for k, p in tv.items()}
    tlat = _latency(tv, ev["text_encoder"][0], args.threads, args.repeats, args.calls * 10)
    for k, row in trows.items():
        row["latency_ms"] = round(tlat[k] * 1000, 4)
    result["text_encoder"] = {"rows": trows, "recipes": trec}
    print(_table(trows, "text encoder (batch 1)"))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


def _table(rows: dict, title: str) -> str:
    fp32 = rows["fp32"]
    big = "latency_64x64_ms" in fp32
    lines = [f"\n{title}\n", ("| variant | output PSNR (dB) | cosine | image PSNR (dB) | max image diff (/255) "
                              "| size (KiB) | size vs fp32 | latency (ms/call) | vs fp32 |"
                              + (" latency 64x64 (ms/call) | vs fp32 |" if big else "")),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if big else "")]
    for k, r in rows.items():
        c = r["call"]
        lines.append(f"| {k} | {c['psnr_db']} | {c['cosine'] if c['cosine'] is None else round(c['cosine'], 6)} "
                     f"| {r.get('image_psnr_db', '-')} | {r.get('image_max_abs_255', '-')} "
                     f"| {r['size_bytes'] / 1024:.0f} | {r['size_bytes'] / fp32['size_bytes']:.2f}x "
                     f"| {r['latency_ms']} | {r['latency_ms'] / fp32['latency_ms']:.2f}x |"
                     + (f" {r['latency_64x64_ms']} | {r['latency_64x64_ms'] / fp32['latency_64x64_ms']:.2f}x |"
                        if big else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
