"""``ldm-run verify``: replay a bundle's golden vectors on this device, without torch.

Checks, each against the tolerance table for the bundle's precision:
the tokenizer's ids, every component on its golden inputs, the latents after
every step of the reference trajectory (naming the first step that drifts), and
the final 8-bit image.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass

import numpy as np

from .bundle import Bundle
from .errors import BundleError, UserError, one_line
from .metrics import compare, max_abs, psnr
from .pipeline import Pipeline
from .request import Request
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
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise BundleError(f"golden vectors {path.name} cannot be read ({one_line(e)}); the bundle is damaged: "
                          "re-copy or rebuild it") from e


def _tables(precision: str):
    try:
        return (COMPONENT_TOLERANCES[precision], TRAJECTORY_TOLERANCES[precision], IMAGE_TOLERANCES[precision])
    except KeyError:
        raise BundleError(f"no tolerances for precision '{precision}' in this ldm-runtime; upgrade it") from None


def golden_tensors(golden: dict[str, np.ndarray], component: str, kind: str) -> dict[str, np.ndarray]:
    """``golden.npz``'s ``<component>/<kind>/<name>`` arrays by name (kind: ``in``, ``out`` or ``ref``)."""
    prefix = f"{component}/{kind}/"
    return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def golden_request(pipeline: Pipeline, golden: dict[str, np.ndarray]) -> Request:
    """The golden trajectory's request, checked against the bundle: one the pipeline refuses means the
    bundle is damaged (it was valid when the build ran it)."""
    req = Request.from_manifest(pipeline.bundle.manifest["golden"], golden)
    try:
        pipeline.check(req)
    except BundleError:
        raise
    except UserError as e:
        raise BundleError(f"manifest.json: the golden request cannot run on this bundle ({e}); the bundle is "
                          "damaged: rebuild it") from e
    return req


def missing_golden(m: dict, golden: dict[str, np.ndarray]) -> list[str]:
    """The golden vectors a complete bundle has and this one lacks."""
    want = ["trajectory/latents", "trajectory/image"]
    for name, comp in m["components"].items():
        want += [f"{name}/in/{k}" for k in comp["inputs"]] + [f"{name}/out/{k}" for k in comp["outputs"]]
    return [k for k in want if k not in golden]


def verify_bundle(pipeline: Pipeline) -> VerifyReport:
    """Every check of the module docstring; a missing golden vector is a failed check, never a skipped one."""
    m = pipeline.bundle.manifest
    comp_tol, traj_tol, img_tol = _tables(m["precision"])
    golden = load_golden(pipeline.bundle)
    missing = missing_golden(m, golden)
    checks = [Check(f"golden vectors: {len(missing)} missing ({', '.join(missing[:2])}"
                    f"{', …' if len(missing) > 2 else ''})", {"mismatches": float(len(missing))}, "none missing",
                    False)] if missing else []
    checks += _tokenizer_check(pipeline, golden)
    for name in m["components"]:
        checks += _component_checks(pipeline, golden, name, comp_tol[name])
    if "trajectory/latents" not in golden or "trajectory/image" not in golden:
        return VerifyReport(checks, None)
    result = pipeline.generate(golden_request(pipeline, golden), trace=True)
    trajectory, first_bad = _trajectory_check(result.latents, golden["trajectory/latents"], traj_tol)
    ref_img = golden["trajectory/image"]
    if ref_img.shape != result.image.shape:
        image = Check("final image (uint8)", {"max_abs": float("inf")}, f"shape {ref_img.shape}", False)
    else:
        diff, img_psnr = max_abs(result.image, ref_img), psnr(result.image, ref_img, 255.0)
        image = Check("final image (uint8)", {"max_abs": diff, "psnr_db": img_psnr},
                      f"≤ {img_tol.max_uint8_diff} levels, ≥ {img_tol.min_psnr_db:g} dB",
                      diff <= img_tol.max_uint8_diff and img_psnr >= img_tol.min_psnr_db)
    return VerifyReport(checks + [trajectory, image], first_bad)


def verify_adapter(pipeline: Pipeline, pack_dir) -> VerifyReport:
    """An adapter pack on this device: the pack swapped in at scale 1, the bundle's golden request replayed,
    every step's latents and the final image against the pack's golden trajectory."""
    from .adapters import open_pack

    m = pipeline.bundle.manifest
    _, traj_tol, img_tol = _tables(m["precision"])
    pack = open_pack(pack_dir)
    pipeline.components.apply_adapters([(pack_dir, 1.0)])
    golden = pack.arrays(pack.meta["golden"]["file"])
    result = pipeline.generate(golden_request(pipeline, load_golden(pipeline.bundle)), trace=True)
    trajectory, first_bad = _trajectory_check(result.latents, golden["trajectory/latents"], traj_tol)
    ref = golden["trajectory/image"]
    ok_shape = ref.shape == result.image.shape
    diff = max_abs(result.image, ref) if ok_shape else float("inf")
    db = psnr(result.image, ref, 255.0) if ok_shape else 0.0
    image = Check(f"final image with {pack.name} (uint8)", {"max_abs": diff, "psnr_db": db},
                  f"≤ {img_tol.max_uint8_diff} levels, ≥ {img_tol.min_psnr_db:g} dB",
                  diff <= img_tol.max_uint8_diff and db >= img_tol.min_psnr_db)
    return VerifyReport([trajectory, image], first_bad)


def _tokenizer_check(pipeline: Pipeline, golden: dict[str, np.ndarray]) -> list[Check]:
    if pipeline.tokenizer is None:
        return []
    ref = golden.get("tokenizer/input_ids")
    if ref is None:
        return [Check("tokenizer ids", {"mismatches": 1.0}, "golden ids present", False)]
    g = pipeline.bundle.manifest["golden"]
    texts = [g["negative_prompt"], g["prompt"]] if ref.shape[0] == 2 else [g["prompt"]]
    ids = pipeline.tokenizer.encode(texts)
    same = ids.shape == ref.shape and bool(np.array_equal(ids, ref))
    return [Check("tokenizer ids", {"mismatches": float(np.sum(ids != ref)) if ids.shape == ref.shape
                                    else float(ref.size)}, "identical", same)]


def _component_checks(pipeline: Pipeline, golden: dict[str, np.ndarray], name: str, tol) -> list[Check]:
    """One check per output of component ``name`` on its golden inputs (none when its vectors are missing:
    :func:`missing_golden` has a failed check for them)."""
    spec = pipeline.bundle.manifest["components"][name]
    inputs, outputs = golden_tensors(golden, name, "in"), golden_tensors(golden, name, "out")
    if set(inputs) != set(spec["inputs"]) or not outputs:
        return []
    got = pipeline.run_component(name, inputs, where="golden inputs")
    checks = []
    for out_name, expected in outputs.items():
        label = name if len(outputs) == 1 else f"{name}.{out_name}"
        if out_name not in got or got[out_name].shape != expected.shape:
            checks.append(Check(label, {"max_abs": float("inf")}, f"output {out_name} of shape {expected.shape}",
                                False))
            continue
        metrics = compare(got[out_name], expected)
        ok = metrics["rel_l2"] <= tol.rel_l2 and metrics["cosine"] >= tol.min_cosine
        checks.append(Check(label, metrics, f"rel_l2 ≤ {tol.rel_l2:g}, cos ≥ {tol.min_cosine}", ok))
    return checks


def _trajectory_check(latents: list[np.ndarray], ref_latents: np.ndarray, tol) -> tuple[Check, int | None]:
    """Every step's latents against the reference; the step count must match too."""
    name = f"trajectory ({len(ref_latents)} steps)"
    if len(latents) != len(ref_latents) or (latents and latents[0].shape != ref_latents[0].shape):
        return Check(name, {"steps": float(len(latents))}, f"{len(ref_latents)} steps of {ref_latents.shape[1:]}",
                     False), None
    first_bad = None
    worst: dict[str, float] = {"max_abs": 0.0, "rel_l2": 0.0, "cosine": 1.0}
    for i, (got, ref) in enumerate(zip(latents, ref_latents), start=1):
        mt = compare(got, ref)
        worst = {"max_abs": max(worst["max_abs"], mt["max_abs"]), "rel_l2": max(worst["rel_l2"], mt["rel_l2"]),
                 "cosine": min(worst["cosine"], mt["cosine"])}
        if first_bad is None and not (mt["rel_l2"] <= tol.rel_l2 and mt["cosine"] >= tol.min_cosine):
            first_bad = i
    return Check(name, worst, f"rel_l2 ≤ {tol.rel_l2:g} every step", first_bad is None), first_bad


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


def junit_suite(report: VerifyReport, bundle_name: str, properties: dict[str, str]):
    """The report as one JUnit suite: a test case per check, a failure carrying its figures and limit."""
    from .junit import Case, Suite, figures

    cases = [Case(name=c.name, classname=f"ldm-run verify.{bundle_name}",
                  failure=None if c.ok else f"{c.name}: {figures(c.metrics)}; limit {c.limit}",
                  details=f"{figures(c.metrics)}; limit {c.limit}") for c in report.checks]
    props = dict(properties)
    if report.first_divergent_step is not None:
        props["first_divergent_step"] = str(report.first_divergent_step)
    return Suite(name=f"ldm-run verify {bundle_name}", cases=cases, properties=props)
