"""``ldm-run verify``: replay a bundle's golden vectors on this device, without torch.

Checks, each against the tolerance table for the bundle's precision:
the tokenizer's ids, every component on its golden inputs, the latents after
every step of the reference trajectory (naming the first step that drifts), and
the final 8-bit image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bundle import Bundle
from .errors import BundleError
from .metrics import compare, max_abs, psnr
from .pipeline import GenerateConfig, Pipeline
from .tolerances import COMPONENT_TOLERANCES, IMAGE_TOLERANCES, TRAJECTORY_TOLERANCES


@dataclass
class Check:
    name: str
    metrics: dict[str, float]
    limit: str
    ok: bool


@dataclass
class VerifyReport:
    checks: list[Check]
    first_divergent_step: int | None  # 1-based, None when every step is within tolerance

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def load_golden(bundle: Bundle) -> dict[str, np.ndarray]:
    path = bundle.path(bundle.manifest["golden"]["file"])
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise BundleError(f"golden vectors {path.name} cannot be read: {e}") from e


def _tables(precision: str):
    try:
        return (COMPONENT_TOLERANCES[precision], TRAJECTORY_TOLERANCES[precision], IMAGE_TOLERANCES[precision])
    except KeyError:
        raise BundleError(f"no tolerances for precision '{precision}' in this ldm-runtime; upgrade it") from None


def golden_tensors(golden: dict[str, np.ndarray], component: str, kind: str) -> dict[str, np.ndarray]:
    """``golden.npz``'s ``<component>/<kind>/<name>`` arrays by name (kind: ``in``, ``out`` or ``ref``)."""
    prefix = f"{component}/{kind}/"
    return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def golden_request(manifest: dict, golden: dict[str, np.ndarray]) -> GenerateConfig:
    """The generation request of the bundle's golden trajectory (manifest ``golden`` + its input images)."""
    g = manifest["golden"]
    return GenerateConfig(
        prompt=g["prompt"], negative_prompt=g["negative_prompt"], steps=g["steps"],
        guidance_scale=g["guidance_scale"], eta=g["eta"], seed=g["seed"], width=g["width"],
        height=g["height"], noise=g.get("noise", "torch"), class_label=g.get("class_label"),
        image=golden.get("request/image"), mask=golden.get("request/mask"),
        sampler=g.get("sampler", "ddim"))  # the golden trajectory is the reference's DDIM one


def verify_bundle(pipeline: Pipeline) -> VerifyReport:
    bundle = pipeline.bundle
    m = bundle.manifest
    comp_tol, traj_tol, img_tol = _tables(m["precision"])
    golden = load_golden(bundle)
    checks: list[Check] = []

    if pipeline.tokenizer is not None and "tokenizer/input_ids" in golden:
        g = m["golden"]
        ref = golden["tokenizer/input_ids"]
        texts = [g["negative_prompt"], g["prompt"]] if ref.shape[0] == 2 else [g["prompt"]]
        ids = pipeline.tokenizer.encode(texts)
        same = ids.shape == ref.shape and bool(np.array_equal(ids, ref))
        checks.append(Check("tokenizer ids", {"mismatches": float(np.sum(ids != ref)) if ids.shape == ref.shape
                                              else float(ref.size)}, "identical", same))

    for name in m["components"]:
        inputs, outputs = golden_tensors(golden, name, "in"), golden_tensors(golden, name, "out")
        if not inputs:
            continue
        tol = comp_tol[name]
        got = pipeline.run_component(name, inputs, where="golden inputs")
        for out_name, expected in outputs.items():
            metrics = compare(got[out_name], expected)
            ok = metrics["rel_l2"] <= tol.rel_l2 and metrics["cosine"] >= tol.min_cosine
            label = name if len(outputs) == 1 else f"{name}.{out_name}"
            checks.append(Check(label, metrics, f"rel_l2 ≤ {tol.rel_l2:g}, cos ≥ {tol.min_cosine}", ok))

    result = pipeline.generate(golden_request(m, golden), trace=True)
    first_bad = None
    ref_latents = golden["trajectory/latents"]
    worst: dict[str, float] = {"max_abs": 0.0, "rel_l2": 0.0, "cosine": 1.0}
    for i, (got, ref) in enumerate(zip(result.latents, ref_latents), start=1):
        mt = compare(got, ref)
        worst = {"max_abs": max(worst["max_abs"], mt["max_abs"]), "rel_l2": max(worst["rel_l2"], mt["rel_l2"]),
                 "cosine": min(worst["cosine"], mt["cosine"])}
        if first_bad is None and not (mt["rel_l2"] <= traj_tol.rel_l2 and mt["cosine"] >= traj_tol.min_cosine):
            first_bad = i
    checks.append(Check(f"trajectory ({len(ref_latents)} steps)", worst,
                        f"rel_l2 ≤ {traj_tol.rel_l2:g} every step", first_bad is None))
    ref_img = golden["trajectory/image"]
    diff = max_abs(result.image, ref_img)
    img_psnr = psnr(result.image, ref_img, 255.0)
    checks.append(Check("final image (uint8)", {"max_abs": diff, "psnr_db": img_psnr},
                        f"≤ {img_tol.max_uint8_diff} levels, ≥ {img_tol.min_psnr_db:g} dB",
                        diff <= img_tol.max_uint8_diff and img_psnr >= img_tol.min_psnr_db))
    return VerifyReport(checks, first_bad)


def format_report(report: VerifyReport) -> str:
    rows = [("check", "max_abs", "rel_l2", "cosine / dB", "limit", "result")]
    for c in report.checks:
        mt = c.metrics
        third = mt.get("cosine", mt.get("psnr_db"))
        rows.append((c.name, f"{mt.get('max_abs', mt.get('mismatches', 0)):.3g}",
                     f"{mt['rel_l2']:.3g}" if "rel_l2" in mt else "-",
                     f"{third:.6f}" if third is not None else "-", c.limit, "ok" if c.ok else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    if report.first_divergent_step is not None:
        lines.append(f"first DDIM step over tolerance: {report.first_divergent_step}")
    lines.append("PASS" if report.ok else "FAIL")
    return "\n".join(lines)
