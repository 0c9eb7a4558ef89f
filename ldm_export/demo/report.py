"""Plot the training curves of ``training_log.json`` (Pillow only, no matplotlib).

    python -m ldm_export.demo.report --log ldm_export/demo/training_log.json --out docs/demo_model_losses.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _panel(draw, box, xs, series, title, log_y=False, colours=("#1f77b4", "#d62728", "#2ca02c")):
    x0, y0, x1, y1 = box
    font = _font()
    draw.rectangle(box, outline="black")
    draw.text((x0 + 4, y0 - 16), title, fill="black", font=font)
    allv = np.concatenate([np.asarray(v, float) for _, v in series])
    tf = (lambda v: np.log10(np.maximum(v, 1e-12))) if log_y else (lambda v: np.asarray(v, float))
    lo, hi = float(tf(allv).min()), float(tf(allv).max())
    hi = hi if hi > lo else lo + 1
    xmax = max(max(x) for x, _ in [(xs[k], v) for k, v in series]) or 1
    for (name, v), col in zip(series, colours):
        x = np.asarray(xs[name], float)
        y = tf(np.asarray(v, float))
        pts = [(x0 + (xi / xmax) * (x1 - x0), y1 - (yi - lo) / (hi - lo) * (y1 - y0)) for xi, yi in zip(x, y)]
        if len(pts) > 1:
            draw.line(pts, fill=col, width=2)
    for frac in (0.0, 0.5, 1.0):
        val = lo + frac * (hi - lo)
        lab = f"{10 ** val:.3g}" if log_y else f"{val:.3g}"
        draw.text((x0 - 44, y1 - frac * (y1 - y0) - 6), lab, fill="black", font=font)
    draw.text((x1 - 60, y1 + 4), f"step {int(xmax)}", fill="black", font=font)
    for i, ((name, _), col) in enumerate(zip(series, colours)):
        draw.text((x0 + 8, y0 + 6 + 14 * i), name, fill=col, font=font)


def _smooth(v, k=5):
    v = np.asarray(v, float)
    if len(v) < k:
        return v
    return np.convolve(np.pad(v, (k // 2, k // 2), mode="edge"), np.ones(k) / k, mode="valid")


def _first_full_step(ae: list[dict]) -> int:
    """The step at which the autoencoder log switches from crops to full images (phase 2)."""
    return next((r["step"] for r in ae if r.get("phase") == "full"), ae[-1]["step"])


def plot(log_path: Path, out: Path) -> None:
    d = json.loads(Path(log_path).read_text())
    ae, df = d.get("autoencoder", []), d.get("diffusion", [])
    W, H = 1000, 330
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    if ae:
        # per pixel value: phase 1 trains on 16 x 16 crops, phase 2 ("full") on 32 x 32 images
        npix = [3 * (32 * 32 if r.get("phase") == "full" else 16 * 16) for r in ae]
        xs = {"reconstruction loss per pixel value (L1 + L2)": [r["step"] for r in ae]}
        _panel(draw, (60, 30, 320, 290), xs, [(k, [r["rec"] / n for r, n in zip(ae, npix)]) for k in xs],
               f"autoencoder (crops until step {_first_full_step(ae)}, then full images)", log_y=True)
        val = [(r["step"], r["psnr_val"]) for r in ae if "psnr_val" in r]
        xs2 = {"train PSNR (dB, posterior sample)": [r["step"] for r in ae],
               "held-out PSNR (dB, posterior mode)": [s for s, _ in val]}
        _panel(draw, (380, 30, 640, 290), xs2, [(list(xs2)[0], [r["psnr_train"] for r in ae]),
                                                (list(xs2)[1], [p for _, p in val])], "autoencoder PSNR")
    if df:
        xs3 = {"min-SNR weighted eps loss": [r["step"] for r in df], "eps MSE": [r["step"] for r in df]}
        _panel(draw, (700, 30, 980, 290), xs3, [("min-SNR weighted eps loss", _smooth([r["loss"] for r in df])),
                                                ("eps MSE", _smooth([r["mse"] for r in df]))],
               "diffusion (UNet + text encoder)", log_y=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--log", type=Path, default=Path(__file__).parent / "training_log.json")
    ap.add_argument("--out", type=Path, default=Path("docs/demo_model_losses.png"))
    args = ap.parse_args(argv)
    plot(args.log, args.out)


if __name__ == "__main__":
    main()
