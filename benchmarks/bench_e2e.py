#!/usr/bin/env python
"""End-to-end benchmark: ldm_runtime (ONNX Runtime, CPU) against diffusers' eager PyTorch pipeline.

One run prints, side by side:

* seconds per image, end to end, for both (median over ``--repeats`` after one warm-up run each);
* per-component seconds (text encoder, UNet total and per step, VAE decoder) for both;
* the runtime's own overhead (end-to-end minus the time inside component calls);
* peak RSS of the runtime in normal and ``--low-memory`` mode, and of diffusers, each measured in a
  fresh child process that generates one image (``os.wait4`` returns that child's ``ru_maxrss``);
* the ratios the targets in docs/performance.md are stated in.

Timing runs happen in two long-lived worker processes, one per side, driven one image at a time and
interleaved (runtime first on even repeats, diffusers first on odd ones), so background load on a
shared machine hits both sides alike. Only one worker computes at any time. Both use as many threads
as the process may use CPU cores (``--threads``): ``torch.set_num_threads`` on one side, ONNX
Runtime's ``intra_op_num_threads`` on the other.

    python benchmarks/bench_e2e.py --model tiny --repeats 5
    python benchmarks/bench_e2e.py --model sd15 --resolution 256 --steps 20 --repeats 3 --work /work/bench-work

The model (random weights, real architecture: ``tests.models.sd``) and its bundle are built
once into ``--work`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the tests' model registry (tests/models) builds the benchmark models
    sys.path.insert(0, str(REPO))

PROMPT = "a photo of an astronaut riding a horse on a mountain at night"
MARK = "@@BENCH "          # prefix of the worker's result lines on stdout
COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------------
# preparation: model folder + bundle, cached in --work


def model_dirs(work: Path, model: str, resolution: int) -> tuple[Path, Path]:
    root = work / model
    return root / "model", root / f"bundle-{resolution}"


def prepare(model: str, model_dir: Path, bundle_dir: Path, resolution: int) -> None:
    """Build what is missing (runs in a child process, so the parent stays free of torch)."""
    from ldm_export.build import BuildConfig, build
    from tests.models.sd import make_sd15_architecture, make_tiny_sd

    if not (model_dir / "model_index.json").exists() or not (model_dir / ".complete").exists():
        if not ((model_dir / "model_index.json").exists()
                and (model_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()):
            print(f"building the {model} model (random weights) in {model_dir}", flush=True)
            (make_sd15_architecture if model == "sd15" else make_tiny_sd)(model_dir)
        (model_dir / ".complete").write_text("")
    if not (bundle_dir / "manifest.json").exists():
        print(f"building the bundle {bundle_dir}", flush=True)
        build(BuildConfig(model=model_dir, out=bundle_dir, resolutions=((resolution, resolution),)),
              report=lambda m: print(f"  {m}", flush=True))


# ----------------------------------------------------------------------------------------------------
# workers


def emit(obj: dict) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


class RssSampler:
    """Samples this process's RSS every few ms and keeps the peak per named phase."""

    def __init__(self, period: float = 0.005):
        import psutil

        self._proc = psutil.Process()
        self.phase = "startup"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._period = period
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            if rss > self.peaks.get(self.phase, 0):
                self.peaks[self.phase] = rss
            time.sleep(self._period)

    def set(self, phase: str) -> None:
        self.phase = phase

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def runtime_worker(a: argparse.Namespace) -> None:
    """ldm_runtime, the way ``ldm-run generate`` drives it (never imports torch)."""
    sampler = RssSampler() if a.once else None
    from contextlib import contextmanager

    from ldm_runtime.bundle import open_bundle
    from ldm_runtime.pipeline import Components, Pipeline
    from ldm_runtime.request import Request
    from ldm_runtime.runners import RunnerOptions

    bundle = open_bundle(a.bundle, check_hashes=False)
    t0 = time.perf_counter()
    components = Components(bundle, options=RunnerOptions(provider="cpu", threads=a.threads, low_memory=a.low_memory))
    pipe = Pipeline(bundle, components)
    if sampler is not None:  # name the phase (the component in use) for the per-stage RSS peaks
        original_use = components.use

        @contextmanager
        def use(name):
            sampler.set(f"load+run {name}")
            with original_use(name) as r:
                yield r
            sampler.set(f"after {name}")

        components.use = use
        sampler.set("load_all")
    components.load_all()
    load_s = time.perf_counter() - t0
    cfg = Request(prompt=PROMPT, steps=a.steps, guidance_scale=a.guidance, seed=a.seed,
                         width=a.resolution, height=a.resolution, noise="torch")

    def one() -> dict:
        start = time.perf_counter()
        result = pipe.generate(cfg)
        e2e = time.perf_counter() - start
        comp = {k: result.seconds.get(k, 0.0) for k in COMPONENTS}
        return {"e2e": e2e, "components": comp, "inner_total": result.seconds["total"],
                "overhead": e2e - sum(comp.values()), "image": result.image}

    serve(a, one, load_s, sampler)


def diffusers_worker(a: argparse.Namespace) -> None:
    """diffusers' StableDiffusionPipeline, eager PyTorch, DDIMScheduler."""
    sampler = RssSampler() if a.once else None
    import torch

    torch.set_num_threads(a.threads)
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(a.model_dir, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)  # fp32, as saved
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    seconds: dict[str, float] = {}

    def hook(module, name):
        def pre(_m, _args, _kwargs=None):
            module._bench_t = time.perf_counter()
            if sampler is not None:
                sampler.set(f"run {name}")

        def post(_m, _args, _out, _kwargs=None):
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - module._bench_t
            if sampler is not None:
                sampler.set("between")

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    hook(pipe.text_encoder, "text_encoder")
    hook(pipe.unet, "unet")
    vae_decode = pipe.vae.decode  # the pipeline calls vae.decode, not forward

    def timed_decode(*args, **kwargs):
        if sampler is not None:
            sampler.set("run vae_decoder")
        start = time.perf_counter()
        try:
            return vae_decode(*args, **kwargs)
        finally:
            seconds["vae_decoder"] = seconds.get("vae_decoder", 0.0) + time.perf_counter() - start
            if sampler is not None:
                sampler.set("between")

    pipe.vae.decode = timed_decode

    def one() -> dict:
        import numpy as np

        seconds.clear()
        start = time.perf_counter()
        out = pipe(PROMPT, negative_prompt="", num_inference_steps=a.steps, guidance_scale=a.guidance,
                   width=a.resolution, height=a.resolution, generator=torch.Generator().manual_seed(a.seed),
                   output_type="np")
        e2e = time.perf_counter() - start
        comp = {k: seconds.get(k, 0.0) for k in COMPONENTS}
        image = (np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8)
        return {"e2e": e2e, "components": comp, "overhead": e2e - sum(comp.values()), "image": image}

    serve(a, one, load_s, sampler)


def serve(a: argparse.Namespace, one, load_s: float, sampler: RssSampler | None) -> None:
    """--once: generate one image, report peak RSS, exit. Otherwise run on each 'run' line of stdin."""
    image_path = Path(a.image_out) if a.image_out else None

    def result(r: dict) -> dict:
        image = r.pop("image")
        if image_path is not None:
            import numpy as np

            np.save(image_path, image)
        return r

    if a.once:
        r = result(one())
        peaks = sampler.stop()
        emit({"ready": True, "load_s": load_s, **r, "sampled_peaks": peaks,
              "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
        return
    emit({"ready": True, "load_s": load_s})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            emit(result(one()))
        elif cmd == "quit":
            break
    emit({"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


# ----------------------------------------------------------------------------------------------------
# the driver


class Worker:
    def __init__(self, side: str, a: argparse.Namespace, model_dir: Path, bundle_dir: Path, log: Path,
                 *, once: bool = False, low_memory: bool = False, image_out: Path | None = None):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--bundle", str(bundle_dir),
               "--model-dir", str(model_dir), "--steps", str(a.steps), "--resolution", str(a.resolution),
               "--seed", str(a.seed), "--guidance", str(a.guidance), "--threads", str(a.threads)]
        if once:
            cmd.append("--once")
        if low_memory:
            cmd.append("--low-memory")
        if image_out is not None:
            cmd += ["--image-out", str(image_out)]
        self.side = side
        self._log = open(log, "a")
        env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env=env)

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
            self._log.write(line)
        raise RuntimeError(f"the {self.side} worker exited early (rc {self.proc.wait()}); see {self._log.name}")

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self.read()

    def finish(self) -> tuple[dict, int]:
        """Quit (if serving), reap the child with wait4 and return (last message, its ru_maxrss in bytes)."""
        if self.proc.poll() is None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        msg = self.read() if self.proc.stdout else {}
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._log.close()
        if self.proc.returncode != 0:
            raise RuntimeError(f"the {self.side} worker failed (rc {self.proc.returncode}); see {self._log.name}")
        return msg, usage.ru_maxrss * 1024


def median(xs):
    return statistics.median(xs)


def fmt_s(x: float) -> str:
    return f"{x:.4f}" if x < 1 else f"{x:.2f}"


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), sep] + [line(r) for r in rows[1:]])


def drive(a: argparse.Namespace) -> int:
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir, bundle_dir = model_dirs(work, a.model, a.resolution)
    logs = work / a.model / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not (bundle_dir / "manifest.json").exists() or not (model_dir / ".complete").exists():
        subprocess.run([sys.executable, os.path.abspath(__file__), "--prepare", "--model", a.model,
                        "--work", str(work), "--resolution", str(a.resolution)], check=True)

    from importlib.metadata import version

    import numpy as np

    print(f"# bench_e2e: model {a.model}, {a.resolution}x{a.resolution}, {a.steps} DDIM steps, guidance "
          f"{a.guidance}, seed {a.seed}, {a.repeats} timed repeats (median) after 1 warm-up, "
          f"{a.threads} threads per side")
    print(f"# onnxruntime {version('onnxruntime')} (CPUExecutionProvider, intra_op_num_threads={a.threads}); "
          f"torch {version('torch')} (set_num_threads({a.threads})); bundle {bundle_dir}", flush=True)

    results: dict[str, list[dict]] = {"runtime": [], "diffusers": []}
    loads = {}
    if a.repeats > 0:
        # Start one worker at a time so that loading does not overlap either.
        rt = Worker("runtime", a, model_dir, bundle_dir, logs / "runtime.log",
                    image_out=work / a.model / "runtime_image.npy")
        loads["runtime"] = rt.read()["load_s"]
        df = Worker("diffusers", a, model_dir, bundle_dir, logs / "diffusers.log",
                    image_out=work / a.model / "diffusers_image.npy")
        loads["diffusers"] = df.read()["load_s"]
        workers = {"runtime": rt, "diffusers": df}
        for side in ("runtime", "diffusers"):  # warm-up
            workers[side].run()
        for i in range(a.repeats):
            order = ("runtime", "diffusers") if i % 2 == 0 else ("diffusers", "runtime")
            for side in order:
                r = workers[side].run()
                results[side].append(r)
                print(f"  repeat {i + 1}/{a.repeats} {side:<9} {r['e2e']:.3f} s", flush=True)
        for w in workers.values():
            w.finish()
        rt_img = np.load(work / a.model / "runtime_image.npy").astype(np.int16)
        df_img = np.load(work / a.model / "diffusers_image.npy").astype(np.int16)
        image_diff = int(np.abs(rt_img - df_img).max())
    else:
        image_diff = None

    # Peak RSS, each in a fresh process generating one image.
    rss: dict[str, dict] = {}
    if a.rss != "none":
        for key, side, low in (("runtime", "runtime", False), ("runtime --low-memory", "runtime", True),
                               ("diffusers", "diffusers", False))[:3 if a.rss == "all" else 2]:
            w = Worker(side, a, model_dir, bundle_dir, logs / f"rss-{side}{'-low' if low else ''}.log",
                       once=True, low_memory=low)
            msg, maxrss = w.finish()
            rss[key] = {"maxrss": maxrss, "self": msg["ru_maxrss"], "peaks": msg["sampled_peaks"],
                        "e2e": msg["e2e"]}
            print(f"  peak RSS {key:<21} {gib(maxrss)}", flush=True)

    # -- report -------------------------------------------------------------------------------------
    out = []
    if a.repeats > 0:
        med = {s: {"e2e": median([r["e2e"] for r in rs]), "overhead": median([r["overhead"] for r in rs]),
                   **{c: median([r["components"][c] for r in rs]) for c in COMPONENTS}}
               for s, rs in results.items()}
        R, D = med["runtime"], med["diffusers"]
        rows = [["seconds per image (median)", "ldm_runtime (ORT CPU)", "diffusers (eager torch)",
                 "runtime / diffusers"]]

        def row(label, r, d):
            rows.append([label, fmt_s(r), fmt_s(d), f"{r / d:.2f}x" if d > 0 else "-"])

        row("end to end", R["e2e"], D["e2e"])
        row("text encoder", R["text_encoder"], D["text_encoder"])
        row(f"UNet total ({a.steps} steps)", R["unet"], D["unet"])
        row("UNet per step (batch 2, CFG)", R["unet"] / a.steps, D["unet"] / a.steps)
        row("VAE decoder", R["vae_decoder"], D["vae_decoder"])
        row("outside components", R["overhead"], D["overhead"])
        rows.append(["outside components, % of end to end", f"{100 * R['overhead'] / R['e2e']:.2f} %",
                     f"{100 * D['overhead'] / D['e2e']:.2f} %", ""])
        rows.append(["load (sessions / from_pretrained)", fmt_s(loads["runtime"]), fmt_s(loads["diffusers"]),
                     ""])
        out.append(table(rows))
        spread = {s: (min(r["e2e"] for r in rs), max(r["e2e"] for r in rs)) for s, rs in results.items()}
        pair = [r["e2e"] / d["e2e"] for r, d in zip(results["runtime"], results["diffusers"])]
        out.append(f"end-to-end range over repeats: runtime {spread['runtime'][0]:.3f}–{spread['runtime'][1]:.3f} s, "
                   f"diffusers {spread['diffusers'][0]:.3f}–{spread['diffusers'][1]:.3f} s; runtime/diffusers "
                   f"per repeat (adjacent runs): {', '.join(f'{x:.2f}' for x in pair)} (median "
                   f"{median(pair):.2f}); max |image difference| runtime vs diffusers: {image_diff} / 255")
    if rss:
        rows = [["peak RSS (fresh process, 1 image)", "ru_maxrss", "largest sampled stage peak",
                 "that image's seconds (not interleaved)"]]
        for key, v in rss.items():
            stage, peak = max(v["peaks"].items(), key=lambda kv: kv[1])
            rows.append([key, gib(v["maxrss"]), f"{gib(peak)} ({stage})", fmt_s(v["e2e"])])
        out.append(table(rows))
        per_stage = "; ".join(f"{k}: " + ", ".join(f"{p} {gib(b)}" for p, b in v["peaks"].items())
                              for k, v in rss.items())
        out.append(f"sampled RSS peaks per stage — {per_stage}")
    rows = [["ratio", "measured", "target", "met"]]
    if a.repeats > 0:
        e2e_ratio = R["e2e"] / D["e2e"]
        ovh = 100 * R["overhead"] / R["e2e"]
        rows.append(["runtime / diffusers end to end (ratio of medians)", f"{e2e_ratio:.2f}x",
                     "<= 1.0x (aim <= 0.8x)", "yes" if e2e_ratio <= 1.0 else "no"])
        rows.append(["runtime / diffusers end to end (median per-repeat ratio)", f"{median(pair):.2f}x",
                     "<= 1.0x (aim <= 0.8x)", "yes" if median(pair) <= 1.0 else "no"])
        rows.append(["runtime overhead, % of end to end", f"{ovh:.2f} %", "<= 2 %", "yes" if ovh <= 2 else "no"])
    if rss:
        low = rss["runtime --low-memory"]["maxrss"] / rss["runtime"]["maxrss"]
        rows.append(["low-memory / normal peak RSS", f"{low:.2f}x", "<= 0.6x", "yes" if low <= 0.6 else "no"])
    if "diffusers" in rss:
        rows.append(["runtime normal / diffusers peak RSS",
                     f"{rss['runtime']['maxrss'] / rss['diffusers']['maxrss']:.2f}x", "(reference)", ""])
    out.append(table(rows))
    text = "\n\n".join(out)
    print("\n" + text)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results, "loads": loads, "rss": rss,
                                            "image_diff": image_diff}, indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("sd15", "tiny"), default="tiny",
                   help="sd15: the Stable Diffusion 1.x architecture (random weights); tiny: a tiny model")
    p.add_argument("--resolution", type=int, default=None,
                   help="square image size in pixels (default: 256 for sd15, 64 for tiny: the tiny model's "
                        "VAE factor is 2, so 64 px gives the 32x32 latent that SD-1.x has at 256 px)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--repeats", type=int, default=3, help="timed images per side (median reported); 0: RSS only")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch / ONNX Runtime intra-op threads (default: the usable CPU cores)")
    p.add_argument("--work", default="/tmp/ldm-bench", help="folder caching the built model and bundle")
    p.add_argument("--rss", choices=("all", "runtime", "none"), default="all",
                   help="which peak-RSS measurements to make (runtime: normal and --low-memory only)")
    p.add_argument("--json", default=None, help="also write the raw measurements to this file")
    # internal: worker processes
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=("runtime", "diffusers"), help=argparse.SUPPRESS)
    p.add_argument("--bundle", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--low-memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--image-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.resolution is None:
        a.resolution = 256 if a.model == "sd15" else 64
    if a.prepare:
        model_dir, bundle_dir = model_dirs(Path(a.work), a.model, a.resolution)
        prepare(a.model, model_dir, bundle_dir, a.resolution)
        return 0
    if a.worker == "runtime":
        runtime_worker(a)
        return 0
    if a.worker == "diffusers":
        diffusers_worker(a)
        return 0
    return drive(a)


if __name__ == "__main__":
    sys.exit(main())
