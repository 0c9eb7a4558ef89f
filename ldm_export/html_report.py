"""``--html report.html``: one self-contained page a reviewer can open anywhere, a phone included.

Per bundle: the summary, a per-step drift plot (matplotlib, log scale, the tolerance as a line), the component
table, the recipe and calibration identity, and per request the reference image, the bundle's image and an
amplified difference map side by side. Then the machine and the versions. Images are embedded as PNG data
URIs (no other file, no network); the layout is a single column that wraps, so it reads at 360 px.
"""

from __future__ import annotations

import base64
import html
import io
import os
import platform
from pathlib import Path

import numpy as np
from ldm_runtime.jsonio import dumps
from ldm_runtime.outputs import atomic_write_text
from ldm_runtime.tolerances import TRAJECTORY_TOLERANCES

CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;padding:12px;max-width:1100px;color:#222}
h1{font-size:1.4em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}h3{font-size:1em}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 6px;
text-align:left;white-space:nowrap}.ok{color:#070}.fail{color:#b00;font-weight:bold}
.case{display:flex;flex-wrap:wrap;gap:8px;margin:10px 0;padding:6px;border:1px solid #eee}
figure{margin:0;text-align:center}figure img{width:128px;height:auto;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:.8em}.plot{max-width:100%;height:auto}pre{white-space:pre-wrap;word-break:break-all;
font-size:.8em;background:#f6f6f6;padding:6px}.meta{flex:1 1 200px;font-size:.85em}
@media (max-width:480px){body{padding:6px}figure img{width:96px}.case{gap:4px;padding:4px}}
"""


def png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def difference_map(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """|a - b| amplified so the largest difference is white (at most ×32); returns the map and the gain."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    gain = float(min(32.0, 255.0 / max(int(d.max()), 1)))
    return np.clip(d * gain, 0, 255).astype(np.uint8), gain


def drift_plot(summary: dict, tolerance: float, title: str) -> str:
    """The per-step rel. L2 percentiles over the requests, log scale, the tolerance dashed; a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), dpi=100)
    ax = fig.add_subplot()
    for q, style in (("50", "-"), ("90", "--"), ("100", ":")):
        values = np.maximum(np.asarray(summary["step_rel_l2_percentiles"][q], float), 1e-12)
        ax.plot(np.arange(1, len(values) + 1), values, style, label=f"p{q}" if q != "100" else "max")
    ax.axhline(tolerance, color="red", linewidth=1, label=f"tolerance {tolerance:g}")
    ax.set_yscale("log")
    ax.set_xlabel("DDIM step")
    ax.set_ylabel("latent rel. L2 vs torch")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(x) -> str:
    return html.escape(str(x))


def _table(head: list[str], rows: list[list], ok_col: int | None = None) -> str:
    out = ["<div class=scroll><table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            cls = (" class=ok" if v == "ok" else " class=fail") if i == ok_col else ""
            cells.append(f"<td{cls}>{_e(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table></div>"


def _summary_table(result) -> str:
    rows = []
    for b in result.bundles:
        s = b.summary
        rows.append([b.bundle.name, b.precision, s["cases"], f"{s['image_psnr_db']['worst']:.2f}",
                     f"{s['image_psnr_db']['median']:.2f}", f"{s['image_max_abs']['worst']:.0f}",
                     f"{s['image_max_abs']['median']:.0f}", s["first_divergent_step"] or "-",
                     s["failed_cases"] + len(s["failed_components"]), "ok" if s["ok"] else "FAIL"])
    return _table(["bundle", "precision", "requests", "PSNR worst dB", "PSNR median dB", "max diff worst",
                   "max diff median", "first bad step", "failed", "result"], rows, ok_col=9)


def _case_grid(ref: np.ndarray, image: np.ndarray, ref_name: str, name: str, meta_html: str,
               attrs: str = "") -> str:
    """The reference, the image and their amplified difference side by side, with ``meta_html`` beside."""
    diff, gain = difference_map(image, ref) if image.shape == ref.shape else (np.zeros_like(ref), 0.0)
    return (f"<div class=case{attrs}>"
            f"<figure><img alt='reference' src='{png_data_uri(ref)}'><figcaption>{_e(ref_name)}</figcaption></figure>"
            f"<figure><img alt='bundle' src='{png_data_uri(image)}'><figcaption>{_e(name)}</figcaption></figure>"
            f"<figure><img alt='difference' src='{png_data_uri(diff)}'><figcaption>|diff| ×{gain:.0f}</figcaption>"
            f"</figure><div class=meta>{meta_html}</div></div>")


def _case_html(b, k: int, ref: np.ndarray, req: dict) -> str:
    case = b.report.cases[k]
    verdict = "ok" if case["ok"] else "FAIL"
    meta = (f"<b>{_e(req['label'])}</b> seed {req['seed']}<br>"
            f"PSNR {case['image_psnr_db']:.2f} dB, max diff {case['image_max_abs']:.0f}, first bad step "
            f"{case['first_divergent_step'] or '-'}<br><span class={'ok' if case['ok'] else 'fail'}>{verdict}</span>")
    return _case_grid(ref, b.images[k], "torch reference", b.bundle.name, meta,
                      f" data-bundle='{_e(b.bundle.name)}' data-request='{k}'")


def _bundle_html(b, result) -> str:
    s = b.summary
    m = _manifest(b.bundle)
    tol = TRAJECTORY_TOLERANCES[m.get("precision", "fp32")].rel_l2 if m.get("precision") in TRAJECTORY_TOLERANCES \
        else TRAJECTORY_TOLERANCES["fp32"].rel_l2
    comps = [[r["component"], f"{r['max_abs']:.3g}", f"{r['rel_l2']:.3g}", f"{r['cosine']:.8f}",
              f"{r['psnr_db']:.2f}", "ok" if r["ok"] else "FAIL"] for r in b.report.components]
    quant = m.get("quantization") or {"recipe": m.get("precision", "fp32")}
    identity = {"precision": m.get("precision"), "target": m.get("target"), "recipe": quant.get("recipe"),
                "calibration": quant.get("calibration"), "source sha256": (m.get("source") or {}).get("sha256")}
    parts = [f"<h2 id='{_e(b.bundle.name)}'>{_e(b.bundle.name)} <span class={'ok' if s['ok'] else 'fail'}>"
             f"{'PASS' if s['ok'] else 'FAIL'}</span></h2>",
             f"<img class=plot alt='per-step drift of {_e(b.bundle.name)}' src='{drift_plot(s, tol, b.bundle.name)}'>",
             "<h3>Components</h3>", _table(["component", "max abs", "rel L2", "cosine", "PSNR dB", "result"], comps,
                                           ok_col=5),
             "<h3>Recipe and calibration</h3>", f"<pre>{_e(dumps(identity, indent=1))}</pre>", "<h3>Requests</h3>"]
    parts += [_case_html(b, k, ref, req) for k, (ref, req) in enumerate(zip(result.reference_images, result.requests))]
    return "\n".join(parts)


def _manifest(bundle: Path) -> dict:
    import json

    try:
        return json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def machine() -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("ldm-export", "ldm-runtime", "torch", "diffusers", "onnxruntime", "numpy", "ray"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"host": platform.node(), "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), **versions}


def render_parity_html(result) -> str:
    body = [f"<h1>Parity report <span class={'ok' if result.ok else 'fail'}>{'PASS' if result.ok else 'FAIL'}"
            "</span></h1>",
            f"<p>{len(result.bundles)} bundles × {len(result.requests)} requests against the torch reference "
            f"(model sha256 <code>{_e(result.identity['model'][:16])}…</code>).</p>",
            _summary_table(result)]
    body += [_bundle_html(b, result) for b in result.bundles]
    body += ["<h2>Machine and versions</h2>", _table(["", ""], [[k, v] for k, v in machine().items()])]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>ldm-export parity report</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_parity_html(path: Path, result) -> Path:
    return atomic_write_text(path, render_parity_html(result))
