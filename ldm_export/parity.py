"""``ldm-export parity``: the bundle through the runtime vs the torch reference, same noise.

The reference is the family's diffusers pipeline where one exists (see
:mod:`ldm_export.reference`), with the scheduler of the sweep's sampler (DDIM by default; ``--sampler``
compares the runtime's numpy port with diffusers' own scheduler). Reports per-component errors (max abs, relative L2,
cosine), per-step latent drift with the first step over tolerance, and final-image
PSNR / max abs difference, for a few prompts (or class labels, or input images) and seeds.

An fp32 bundle passes within the fp32 tolerance tables. A quantized bundle (fp16, int8,
mixed) is judged by its precision's quality target instead (``QUALITY_TARGETS``: component
PSNR and final-image PSNR against fp32 torch); its per-step drift is reported, not bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ldm_runtime.bundle import open_bundle
from ldm_runtime.errors import UserError
from ldm_runtime.metrics import compare, max_abs, psnr, tensor_psnr
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.request import Request
from ldm_runtime.runners import RunnerOptions
from ldm_runtime.tolerances import (COMPONENT_TOLERANCES, IMAGE_TOLERANCES, TRAJECTORY_TOLERANCES, quality_key,
                                    quality_target)

from .export import component_graphs, torch_outputs
from .golden import component_inputs, family_request
from .loading import load_model
from .lora import LoraSpec, check_same_adapters, fuse_adapters
from .reference import reference_generate

DEFAULT_PROMPTS = ("a red circle on the left", "a small blue square above a green triangle",
                   "a photograph of an astronaut riding a horse")


@dataclass(frozen=True)
class ParitySweep:
    """Compare ``bundle`` with ``reference`` on ``base`` (steps, guidance, eta, size) over prompts × seeds
    (or class labels × seeds, or seeds: whatever the family takes)."""

    bundle: Path
    reference: Path
    base: Request = Request(steps=20, guidance_scale=7.5)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seeds: tuple[int, ...] = (0, 42)
    class_labels: tuple[int, ...] = (0,)
    provider: str | None = None     # ONNX Runtime execution provider of the runtime side (None: the best)
    backend: str | None = None      # the runtime backend (None: the bundle's; coreml-reference for Core ML on Linux)
    config: Path | None = None      # original YAML when the reference is a single-file checkpoint
    tokenizer: Path | None = None
    factories: tuple[tuple[str, str], ...] = ()  # (component, "pkg.module:function"), custom models
    loras: tuple[tuple[Path, float], ...] = ()   # LoRA files fused into the reference, as the build merged them
    given: frozenset[str] = frozenset()  # "prompts", "class_labels": set by the user (refused where not taken)


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


def _component_rows(pipeline: Pipeline, graphs, inputs, precision: str) -> list[dict]:
    """Each component on an input taken from the reference run, runtime vs torch (``precision``: the key of
    the quality target that judges the bundle, ``ldm_runtime.tolerances.quality_key``)."""
    rows = []
    target = quality_target(precision)
    for g in graphs:
        tol = COMPONENT_TOLERANCES["fp32"][g.name]
        got = pipeline.run_component(g.name, inputs[g.name], where="parity inputs")
        for name, ref in torch_outputs(g, inputs[g.name]).items():
            m = {**compare(got[name], ref), "psnr_db": tensor_psnr(got[name], ref)}
            label = g.name if len(g.outputs) == 1 else f"{g.name}.{name}"
            if precision == "fp32":
                ok = m["rel_l2"] <= tol.rel_l2 and m["cosine"] >= tol.min_cosine
            else:
                ok = target.component_psnr_db is None or m["psnr_db"] >= target.component_psnr_db
            rows.append({"component": label, **m, "ok": ok})
    return rows


def _requests(model, sweep: ParitySweep, width: int, height: int) -> list[Request]:
    """The cases to compare: prompts × seeds, class labels × seeds, or seeds (with a synthetic input image)."""
    kind = model.conditioning.kind
    for option, takes, flag in (("prompts", "text", "--prompt/--prompts"), ("class_labels", "class", "--class-label")):
        if option in sweep.given and kind != takes:
            raise UserError(f"{flag}: the reference model is {model.family}, which takes no "
                            f"{'prompt' if takes == 'text' else 'class label'} ({kind} conditioning); leave it out")
    variants = ([{"prompt": p} for p in sweep.prompts] if kind == "text"
                else [{"class_label": c} for c in sweep.class_labels] if kind == "class" else [{}])
    return [family_request(model, replace(sweep.base, seed=seed, **v), width, height)
            for seed in sweep.seeds for v in variants]


@dataclass
class BundleSide:
    """One bundle ready to be compared: its pipeline and the tables that judge it."""

    path: Path
    pipeline: Pipeline
    precision: str          # fp32: the tolerance tables; else the key of the quality target
    manifest: dict


def open_side(path: Path, model, sweep: ParitySweep, check_hashes: bool = True) -> BundleSide:
    """Open ``path`` for comparison with ``model``; a bundle built from another model is refused in one line."""
    bundle = open_bundle(path, check_hashes=check_hashes)
    pipeline = Pipeline(bundle, Components(bundle, backend=sweep.backend,
                                           options=RunnerOptions(provider=sweep.provider)))
    built_from = bundle.manifest["source"]["sha256"]
    if model.source.sha256 != built_from:
        raise UserError(f"{sweep.reference} is not the model {path} was built from (sha256 "
                        f"{model.source.sha256[:12]}… vs the bundle's {built_from[:12]}…); pass the same model, with "
                        "the same --config/--tokenizer or factories as the build")
    check_same_adapters(bundle.manifest.get("adapters", []), [LoraSpec(Path(f), s) for f, s in sweep.loras],
                        str(path), "parity")
    return BundleSide(Path(path), pipeline, quality_key(bundle.manifest), bundle.manifest)


def load_reference(sweep: ParitySweep):
    """The torch model to compare with: the reference, with the sweep's LoRA files fused as the build did."""
    model = load_model(sweep.reference, sweep.config, sweep.tokenizer, dict(sweep.factories))
    if sweep.loras:
        fuse_adapters(model, [LoraSpec(Path(f), s) for f, s in sweep.loras])
    return model


def sweep_requests(model, side: BundleSide, sweep: ParitySweep) -> list[Request]:
    width, height = side.pipeline.resolve_size(sweep.base.width, sweep.base.height)
    return _requests(model, sweep, width, height)


def case_label(model, req: Request) -> str:
    return req.prompt or (f"class {req.class_label}" if req.class_label is not None else model.family)


def compare_case(side: BundleSide, model, req: Request, ref) -> tuple[dict, object]:
    """The bundle's run of ``req`` against the reference run ``ref``: the case's figures, and its image."""
    traj_tol, img_tol = TRAJECTORY_TOLERANCES[side.manifest["precision"]], IMAGE_TOLERANCES["fp32"]
    run = side.pipeline.generate(replace(req, sampler=req.sampler or "ddim"), trace=True)  # the reference's scheduler
    complete = len(run.latents) == len(ref.latents) > 0
    drift = [compare(a, b) for a, b in zip(run.latents, ref.latents)]
    first = next((i for i, d in enumerate(drift, 1)
                  if d["rel_l2"] > traj_tol.rel_l2 or d["cosine"] < traj_tol.min_cosine), None)
    diff = max_abs(run.image, ref.image)
    p = psnr(run.image, ref.image, 255.0)
    if side.precision == "fp32":
        ok = first is None and complete and diff <= img_tol.max_uint8_diff and p >= img_tol.min_psnr_db
    else:
        ok = complete and p >= quality_target(side.precision).image_psnr_db
    return {
        "prompt": case_label(model, req), "seed": req.seed, "steps": req.steps, "eta": req.eta,
        "sampler": req.sampler or "ddim",
        "step_rel_l2": [d["rel_l2"] for d in drift], "step_max_abs": [d["max_abs"] for d in drift],
        "first_divergent_step": first, "image_max_abs": diff, "image_psnr_db": p,
        "ok": ok,
    }, run.image


def component_rows(side: BundleSide, model, req: Request, ref) -> list[dict]:
    """Every component of ``side`` on inputs from the reference run ``ref`` of ``req``."""
    return _component_rows(side.pipeline, component_graphs(model), component_inputs(model, ref, req), side.precision)


def run_parity(sweep: ParitySweep, report_line=lambda msg: None) -> ParityReport:
    model = load_reference(sweep)
    side = open_side(sweep.bundle, model, sweep)
    report = ParityReport()
    for req in sweep_requests(model, side, sweep):
        report_line(f"parity: {case_label(model, req)!r} seed {req.seed}")
        ref = reference_generate(model, req)
        if not report.components:
            report.components = component_rows(side, model, req, ref)
        report.cases.append(compare_case(side, model, req, ref)[0])
    side.pipeline.components.release_all()
    return report


def format_parity(report: ParityReport) -> str:
    lines = ["component                max_abs     rel_l2      cosine      PSNR dB  result"]
    for r in report.components:
        lines.append(f"{r['component']:<24} {r['max_abs']:<11.3g} {r['rel_l2']:<11.3g} {r['cosine']:<11.8f} "
                     f"{r['psnr_db']:<8.2f} {'ok' if r['ok'] else 'FAIL'}")
    lines.append("")
    lines.append("case                                        seed  worst step drift  first bad step  "
                 "image max abs  PSNR dB  result")
    for c in report.cases:
        lines.append(f"{c['prompt'][:42]:<43} {c['seed']:<5} {max(c['step_rel_l2']):<17.3g} "
                     f"{str(c['first_divergent_step'] or '-'):<15} {c['image_max_abs']:<14.0f} "
                     f"{c['image_psnr_db']:<8.2f} {'ok' if c['ok'] else 'FAIL'}")
    lines += [f"note: {n}" for n in report.notes]
    lines.append("PASS" if report.ok else "FAIL")
    return "\n".join(lines)
