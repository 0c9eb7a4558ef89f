"""``ldm-export parity``: the bundle through the runtime vs diffusers' pipeline, same noise.

Reports per-component errors (max abs, relative L2, cosine), per-step latent
drift with the first step over tolerance, and final-image PSNR / max abs
difference, for a few prompts and seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldm_runtime.bundle import open_bundle
from ldm_runtime.metrics import compare, max_abs, psnr
from ldm_runtime.pipeline import Components, GenerateConfig, Pipeline
from ldm_runtime.tolerances import COMPONENT_TOLERANCES, IMAGE_TOLERANCES, TRAJECTORY_TOLERANCES

from .export import component_graphs, torch_run
from .loading import load_model
from .reference import reference_generate, reference_pipeline

DEFAULT_PROMPTS = ("a red circle on the left", "a small blue square above a green triangle",
                   "a photograph of an astronaut riding a horse")


@dataclass(frozen=True)
class ParityConfig:
    bundle: Path
    reference: Path
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seeds: tuple[int, ...] = (0, 42)
    steps: int = 20
    guidance_scale: float = 7.5
    eta: float = 0.0
    width: int | None = None
    height: int | None = None
    providers: tuple[str, ...] | None = None


@dataclass
class ParityReport:
    components: list[dict] = field(default_factory=list)
    cases: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.components) and all(c["ok"] for c in self.cases)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "components": self.components, "cases": self.cases, "notes": self.notes}


def _component_rows(pipeline: Pipeline, model, ref, timestep: int, precision: str) -> list[dict]:
    """Each component on inputs taken from the reference run, runtime vs torch."""
    graphs = {g.name: g for g in component_graphs(model)}
    lat = pipeline.bundle.manifest["latent"]
    c = ref.text_embeddings.shape[0]
    inputs = {
        "text_encoder": {"input_ids": ref.input_ids},
        "unet": {"sample": np.concatenate([ref.latents[0]] * c),
                 "timestep": np.full((c,), timestep, np.float32), "encoder_hidden_states": ref.text_embeddings},
        "vae_decoder": {"latent": (ref.latents[-1] / np.float32(lat["scaling_factor"])
                                   + np.float32(lat["shift_factor"])).astype(np.float32)},
        "vae_encoder": {"image": np.clip(ref.decoded, -1, 1).astype(np.float32)},
    }
    rows = []
    for name in pipeline.bundle.manifest["components"]:
        tol = COMPONENT_TOLERANCES[precision][name]
        with pipeline.components.use(name) as runner:
            got = pipeline.run_batch(runner, inputs[name], where="parity inputs")
        m = compare(got, torch_run(graphs[name], inputs[name]))
        rows.append({"component": name, **m, "ok": m["rel_l2"] <= tol.rel_l2 and m["cosine"] >= tol.min_cosine})
    return rows


def run_parity(cfg: ParityConfig, report_line=lambda msg: None) -> ParityReport:
    bundle = open_bundle(cfg.bundle)
    precision = bundle.manifest["precision"]
    options = {"providers": list(cfg.providers)} if cfg.providers else {}
    pipeline = Pipeline(bundle, Components(bundle, **options))
    width, height = pipeline.resolve_size(cfg.width, cfg.height)
    model = load_model(cfg.reference)
    report = ParityReport()
    if model.source_sha256 != bundle.manifest["source"]["sha256"]:
        report.notes.append("the reference model's hash differs from the one the bundle was built from")
    pipe = reference_pipeline(model)
    traj_tol, img_tol = TRAJECTORY_TOLERANCES[precision], IMAGE_TOLERANCES[precision]
    for prompt in cfg.prompts:
        for seed in cfg.seeds:
            report_line(f"parity: '{prompt}' seed {seed}")
            ref = reference_generate(pipe, prompt, "", cfg.steps, cfg.guidance_scale, cfg.eta, seed, width, height)
            if not report.components:
                t = int(ref.timesteps[min(1, len(ref.timesteps) - 1)])
                report.components = _component_rows(pipeline, model, ref, t, precision)
            run = pipeline.generate(GenerateConfig(prompt=prompt, steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                                                   eta=cfg.eta, seed=seed, width=width, height=height), trace=True)
            drift = [compare(a, b) for a, b in zip(run.latents, ref.latents)]
            first = next((i for i, d in enumerate(drift, 1)
                          if d["rel_l2"] > traj_tol.rel_l2 or d["cosine"] < traj_tol.min_cosine), None)
            diff = max_abs(run.image, ref.image)
            p = psnr(run.image, ref.image, 255.0)
            report.cases.append({
                "prompt": prompt, "seed": seed, "steps": cfg.steps, "eta": cfg.eta,
                "step_rel_l2": [d["rel_l2"] for d in drift], "step_max_abs": [d["max_abs"] for d in drift],
                "first_divergent_step": first, "image_max_abs": diff, "image_psnr_db": p,
                "ok": first is None and diff <= img_tol.max_uint8_diff and p >= img_tol.min_psnr_db,
            })
    pipeline.components.release_all()
    return report


def format_parity(report: ParityReport) -> str:
    lines = ["component      max_abs     rel_l2      cosine      result"]
    for r in report.components:
        lines.append(f"{r['component']:<14} {r['max_abs']:<11.3g} {r['rel_l2']:<11.3g} {r['cosine']:<11.8f} "
                     f"{'ok' if r['ok'] else 'FAIL'}")
    lines.append("")
    lines.append("prompt                                      seed  worst step drift  first bad step  "
                 "image max abs  PSNR dB  result")
    for c in report.cases:
        lines.append(f"{c['prompt'][:42]:<43} {c['seed']:<5} {max(c['step_rel_l2']):<17.3g} "
                     f"{str(c['first_divergent_step'] or '-'):<15} {c['image_max_abs']:<14.0f} "
                     f"{c['image_psnr_db']:<8.2f} {'ok' if c['ok'] else 'FAIL'}")
    lines += [f"note: {n}" for n in report.notes]
    lines.append("PASS" if report.ok else "FAIL")
    return "\n".join(lines)
