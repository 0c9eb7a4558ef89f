"""``ldm-export calibrate``: record what each component really sees along DDIM trajectories.

For each of ``samples`` trajectories the family's torch reference (diffusers' own pipeline,
see :mod:`ldm_export.reference`) runs a full DDIM sampling with a prompt of the prompt set,
and hooks record the inputs of the UNet at every step. ``per_trajectory`` of those steps
are kept, one from each of ``per_trajectory`` equal bins of the trajectory, so every
timestep range is represented (Q-Diffusion, PTQ4DM: activations of a diffusion model's
UNet drift with the timestep, and calibrating on one range breaks the others). The text
encoder's, class embedder's and autoencoder's inputs of the same trajectory are recorded
once. Shards are safetensors files; the set is written atomically and is byte-identical
for the same model, arguments and library versions on the same machine.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from ldm_runtime.bundle import sha256_file
from ldm_runtime.errors import UserError
from ldm_runtime.request import Request

from ..provenance import producer
from ..bundle import check_replaceable, staging_folder
from ..lora import LoraSpec, fuse_adapters, recorded
from ..sweep import ExecutorConfig, Task, TaskStore, run_tasks
from ..sweep.store import store_folder
from .format import FORMAT, FORMAT_VERSION, MANIFEST, is_calibration_set, record_key
from .prompt_sets import AUTO, PromptSet, default_guidance, load_prompts, resolve_spec
from .tasks import CalibrationJob, records_of

SHARD_BYTES = 256 * 2**20   # a shard is closed before it would grow past this (one record at least)
HISTOGRAM_BINS = 10         # the manifest's timestep histogram: tenths of the training timesteps


def stratified_steps(steps: int, per_trajectory: int, rng: np.random.Generator) -> list[int]:
    """Step indices to record: the trajectory's ``steps`` split into ``per_trajectory`` equal bins
    (early, noisy steps first), one index drawn uniformly from each bin."""
    edges = [j * steps // per_trajectory for j in range(per_trajectory + 1)]
    return [int(rng.integers(edges[j], edges[j + 1])) for j in range(per_trajectory)]


class _ShardWriter:
    """Records of one component, written as ``<component>-NNNNN.safetensors`` of at most ``limit`` bytes."""

    def __init__(self, folder: Path, component: str, limit: int = SHARD_BYTES):
        self.folder, self.component, self.limit = folder, component, limit
        self.count, self.files = 0, []
        self.specs: dict[str, dict] | None = None
        self._pending: dict[str, np.ndarray] = {}
        self._bytes = 0

    def add(self, feeds: dict[str, np.ndarray]) -> None:
        specs = {n: {"dtype": str(a.dtype), "shape": list(a.shape)} for n, a in feeds.items()}
        if self.specs is None:
            self.specs = specs
        elif specs != self.specs:  # one request shape for the whole set: a difference is our bug
            raise RuntimeError(f"{self.component} record {self.count} is {specs}, the first was {self.specs}")
        size = sum(a.nbytes for a in feeds.values())
        if self._pending and self._bytes + size > self.limit:
            self._flush()
        self._pending.update({record_key(self.count, n): np.ascontiguousarray(a) for n, a in feeds.items()})
        self._bytes += size
        self.count += 1

    def close(self) -> list[str]:
        if self._pending:
            self._flush()
        return self.files

    def _flush(self) -> None:
        from safetensors.numpy import save_file

        name = f"{self.component}-{len(self.files):05d}.safetensors"
        # One metadata key only: safetensors keeps metadata in a hash map, so two keys come out in either order.
        save_file(self._pending, str(self.folder / name), metadata={"format": FORMAT})
        self.files.append(name)
        self._pending, self._bytes = {}, 0


def _check_counts(samples: int, steps: int, per_trajectory: int) -> None:
    if samples < 1 or steps < 1 or per_trajectory < 1:
        raise UserError(f"samples ({samples}), steps ({steps}) and per-trajectory ({per_trajectory}) must be ≥ 1")
    if per_trajectory > steps:
        raise UserError(f"per-trajectory ({per_trajectory}) exceeds the trajectory's {steps} steps; "
                        f"pass --per-trajectory {steps} or fewer, or more --steps")


def _prompt_order(prompts: PromptSet, samples: int, rng: np.random.Generator) -> list[str]:
    """Prompts for the samples: the set in seeded random order, reshuffled each time it runs out."""
    order: list[int] = []
    while len(order) < samples:
        order += rng.permutation(len(prompts.prompts)).tolist()
    return [prompts.prompts[i] for i in order[:samples]]


def _class_labels(model, samples: int, rng: np.random.Generator) -> list[int]:
    cond = model.classes
    labels = [c for c in range(cond.num_classes) if c != cond.null_class]
    return [labels[i] for i in rng.integers(0, len(labels), samples)]


def _coverage(timesteps: list[int], train_steps: int) -> dict:
    edges = [round(v) for v in np.linspace(0, train_steps, HISTOGRAM_BINS + 1)]
    counts = np.histogram(timesteps, bins=edges)[0].tolist()
    return {"recorded": timesteps, "min": min(timesteps), "max": max(timesteps),
            "histogram": {"edges": edges, "counts": counts},
            "bins_covered": sum(c > 0 for c in counts)}


def collect(model_path: Path, out: Path, *, prompts: str = AUTO, steps: int = 20, samples: int = 64,
            seed: int = 0, guidance_scale: float | None = None, per_trajectory: int = 4, width: int | None = None,
            height: int | None = None, config: Path | None = None, tokenizer: Path | None = None,
            factories: dict[str, str] | None = None, overwrite: bool = False,
            report: Callable[[str], None] | None = None, sampler: str = "ddim",
            loras: tuple[tuple[Path, float], ...] = (), executor: ExecutorConfig = ExecutorConfig(),
            resume: bool = False) -> dict:
    """Write a calibration set of ``model_path`` to ``out``; returns its manifest.

    ``prompts``: ``general``, ``shapes``, a prompt file, or ``auto`` (``shapes`` for the embedded demo model,
    ``general`` otherwise); text models only. ``guidance_scale`` None: the embedded demo model's scale for
    it, 7.5 otherwise. ``sampler``: the trajectories' scheduler (diffusers' class of that runtime sampler;
    use the one the deployed bundle will sample with). ``loras``: LoRA files fused first (build --lora), so the
    activations are the adapted model's (each worker fuses them too). ``report`` receives a line per stage and
    turns on a progress bar over the samples (stderr); None keeps quiet. ``executor``: where the trajectories
    run (one task each, see :mod:`ldm_export.sweep`); the set is byte-identical whichever runs them. Finished
    trajectories are kept beside ``out`` until the set is written; ``resume`` continues an interrupted
    collection from them.
    """
    from ..export import component_graphs
    from ..loading import load_model
    from ..resolution import check_resolutions

    say = report or (lambda msg: None)
    _check_counts(samples, steps, per_trajectory)
    prompt_set = load_prompts(resolve_spec(prompts, model_path))
    if guidance_scale is None:
        guidance_scale = default_guidance(model_path)
    check_replaceable(Path(out), overwrite, kind="calibration set", is_kind=is_calibration_set,
                      protected=[p for p in (model_path, config, tokenizer, *(f for f, _ in loras)) if p is not None])
    say(f"loading {model_path}")
    model = load_model(model_path, config, tokenizer, factories)
    specs = [LoraSpec(Path(f), float(s)) for f, s in loras]
    adapters = recorded(specs)   # each file hashed once: for the task identity and the manifest
    if specs:
        fuse_adapters(model, specs, say)
    dw, dh = model.default_resolution
    size = check_resolutions(model, ((width or dw, height or dh),))[0]
    pick_rng, step_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    requests = [replace(r, sampler=sampler) for r in _requests(model, prompt_set, samples, pick_rng, seed=seed,
                                                                steps=steps, guidance_scale=guidance_scale, size=size)]
    graphs = {g.name: list(g.inputs) for g in component_graphs(model)}
    say(f"running {samples} {sampler} trajectories of {steps} steps at {size[0]}x{size[1]}, recording "
        f"{per_trajectory} UNet inputs from each")
    picks = [stratified_steps(steps, per_trajectory, step_rng) for _ in requests]
    identity = {"kind": "calibration", "model": model.source.sha256, "prompts": prompt_set.sha256, "sampler": sampler,
                "seed": seed, "steps": steps, "guidance_scale": guidance_scale, "resolution": list(size),
                "per_trajectory": per_trajectory, "samples": samples,
                "loras": [[e["sha256"], e["scale"]] for e in adapters]}
    job = CalibrationJob(Path(model_path).absolute(), _abs(config), _abs(tokenizer),
                         tuple(sorted((factories or {}).items())), model.source.sha256,
                         tuple((Path(f).absolute(), float(v)) for f, v in loras))
    tasks, store = _run_trajectories(job, requests, picks, store_folder(out), identity, executor, resume, say)
    with staging_folder(out) as staging:
        writers = {name: _ShardWriter(staging, name) for name in graphs}
        trajectories = [_write_trajectory(store.get(t.key), writers) for t in _progress(tasks, report is not None)]
        say("writing shards and the manifest")
        components = {name: {"inputs": wr.specs, "input_names": graphs[name], "count": wr.count,
                             "shards": wr.close()} for name, wr in writers.items() if wr.count}
        files = {}
        for p in sorted(staging.iterdir()):
            p.chmod(0o644)
            files[p.name] = sha256_file(p)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "producer": producer(),
            "model": {"name": Path(model_path).name, "family": model.family, "sha256": model.source.sha256},
            "prompts": ({"set": prompt_set.name, "sha256": prompt_set.sha256, "count": len(prompt_set.prompts)}
                        if model.text is not None else None),
            "sampler": sampler, "seed": seed, "steps": steps, "guidance_scale": guidance_scale, "eta": 0.0,
            "classifier_free_guidance": components["unet"]["inputs"]["sample"]["shape"][0] == 2,
            "samples": samples, "per_trajectory": per_trajectory, "resolution": list(size),
            "components": components,
            "timesteps": _coverage([t for tr in trajectories for t in tr["timesteps"]],
                                   int(model.scheduler_config.get("num_train_timesteps", 1000))),
            "trajectories": trajectories, "files": files, "loras": adapters,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (staging / MANIFEST).chmod(0o644)
    store.remove()
    return manifest


def _requests(model, prompt_set: PromptSet, samples: int, rng: np.random.Generator, *, seed: int, steps: int,
              guidance_scale: float, size: tuple[int, int]) -> list:
    """The reference request of every trajectory: prompt (or class label), seed ``seed + k``, the family's
    guidance rule and input images as for the golden vectors."""
    from ..golden import family_request

    kind = model.conditioning.kind
    texts = _prompt_order(prompt_set, samples, rng) if kind == "text" else [""] * samples
    labels = _class_labels(model, samples, rng) if kind == "class" else [None] * samples
    return [family_request(model, Request(prompt=texts[k], seed=seed + k, steps=steps, guidance_scale=guidance_scale,
                                          class_label=labels[k]), *size)
            for k in range(samples)]


def _write_trajectory(result, writers: dict[str, _ShardWriter]) -> dict:
    """Add one finished trajectory's records to the shards, in the order the task recorded them; returns
    its manifest entry."""
    entry, arrays = result
    for component, feeds in records_of(arrays):
        writers[component].add(feeds)
    return entry


def _run_trajectories(job: CalibrationJob, requests: list, picks: list[list[int]], folder: Path, identity: dict,
                      executor: ExecutorConfig, resume: bool, say) -> tuple[list[Task], TaskStore]:
    """One task per trajectory, run by ``executor``; the finished ones are in the returned store."""
    tasks = [Task(f"{k:06d}", (k, req, picks[k]), f"{_label(req)} seed {req.seed}") for k, req in enumerate(requests)]
    store = TaskStore(folder, {**identity, "tasks": [t.key for t in tasks]}, resume)
    run_tasks(executor, job, tasks, store, say, what="trajectories")
    return tasks, store


def _label(req) -> str:
    return repr(req.prompt) if req.prompt else (f"class {req.class_label}" if req.class_label is not None
                                                 else "trajectory")


def _abs(p: Path | None) -> Path | None:
    return None if p is None else Path(p).absolute()


def _progress(items: list, show: bool):
    from tqdm import tqdm

    return tqdm(items, desc="trajectories", unit="traj", file=sys.stderr, disable=not show, dynamic_ncols=True)


def summary_line(manifest: dict, out: Path) -> str:
    """One line: records per component, the timestep range covered, where the set is."""
    comps = ", ".join(f"{name} {c['count']}" for name, c in manifest["components"].items())
    t = manifest["timesteps"]
    return (f"calibration set of {manifest['samples']} trajectories written to {out}: records {comps}; "
            f"timesteps {t['min']}–{t['max']} ({t['bins_covered']}/{len(t['histogram']['counts'])} tenths of "
            f"0–{t['histogram']['edges'][-1]} covered)")
