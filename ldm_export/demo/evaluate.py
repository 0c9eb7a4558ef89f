"""Score the demo model's prompt adherence with the analytic checker.

    python -m ldm_export.demo.evaluate [--model ldm_export/demo/model] [--prompts 100] [--seeds 2]
                                       [--steps 50] [--guidance 1.5 ...] [--json out.json]
                                       [--prompt-seed 1234] [--first-seed 0] [--autoencoder 400]

Images come from diffusers' ``StableDiffusionPipeline`` (DDIM, ``--steps``
steps); image ``(prompt, seed)`` uses ``torch.Generator().manual_seed(seed)``.
Prompts are :func:`ldm_export.demo.shapes.eval_prompts` (drawn from the
training caption distribution: about half single-object, half two-object).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import GUIDANCE, MODEL_DIR, adherence, shapes


SHOWCASE_PROMPTS = [
    "a red circle",
    "a green square on the left",
    "a blue triangle on the right",
    "a large yellow circle at the top",
    "a small red square at the bottom",
    "a green triangle in the center",
    "a red circle above a blue square",
    "a yellow triangle to the left of a green circle",
    "a large blue square below a small yellow circle",
    "a green circle to the right of a red triangle",
]


def load_pipeline(model: Path | str = MODEL_DIR, threads: int | None = None):
    import torch
    from diffusers import StableDiffusionPipeline

    if threads:
        torch.set_num_threads(threads)
    pipe = StableDiffusionPipeline.from_pretrained(str(model), torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts: list[str], seeds: list[int], *, steps: int = 50, guidance: float = GUIDANCE,
             batch: int = 100) -> list[np.ndarray]:
    """Images (float [0, 1], H x W x 3) for every (prompt, seed), prompt-major order."""
    import torch

    pairs = [(p, s) for p in prompts for s in seeds]
    out: list[np.ndarray] = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        res = pipe(prompt=[p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=[torch.Generator().manual_seed(s) for _, s in chunk], output_type="np")
        out.extend(list(res.images))
    return out


def autoencoder_images(pipe, n: int = 400, seed: int = 777):
    """Captions, ``n`` held-out ground-truth images and their autoencoder reconstructions (posterior mean),
    both float [0, 1]: the checker's score on the reconstructions is the ceiling that any latent the
    UNet makes can reach."""
    import torch

    from .train_common import to_tensor

    imgs, caps, _ = shapes.make_dataset(n, seed=seed)
    recs: list[np.ndarray] = []
    with torch.no_grad():
        for i in range(0, n, 100):
            rec = pipe.vae.decode(pipe.vae.encode(to_tensor(imgs[i:i + 100])).latent_dist.mean).sample
            recs.extend(list(((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()))
    return caps, list(imgs.astype(np.float64) / 255), recs


def table(prompts: list[str], images: list[np.ndarray], seeds: int) -> dict[str, dict[str, float]]:
    reps = [p for p in prompts for _ in range(seeds)]
    single = [i for i, p in enumerate(reps) if len(shapes.parse_caption(p)["objects"]) == 1]
    pair = [i for i, p in enumerate(reps) if len(shapes.parse_caption(p)["objects"]) == 2]
    rows = {}
    for name, idx in (("one object", single), ("two objects", pair), ("all", list(range(len(reps))))):
        if idx:
            rows[name] = adherence.score([reps[i] for i in idx], [images[i] for i in idx])
    return rows


def format_table(rows: dict[str, dict[str, float]]) -> str:
    cols = adherence.ATTRIBUTES
    head = "| prompts | n | " + " | ".join(c.replace("_", "+") for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['n']} | " + " | ".join(f"{100 * r[c]:.1f} %" for c in cols) + " |")
    return "\n".join(lines)


def sample_grid(pipe, path: Path, *, guidance: float = GUIDANCE, steps: int = 50, prompts: list[str] | None = None,
                seeds: list[int] | None = None, scale: int = 3) -> None:
    """A PNG grid: one row per prompt (caption on the left), one column per seed."""
    from PIL import Image, ImageDraw, ImageFont

    prompts = prompts or SHOWCASE_PROMPTS
    seeds = seeds if seeds is not None else list(range(6))
    imgs = generate(pipe, prompts, seeds, steps=steps, guidance=guidance)
    s = imgs[0].shape[0] * scale
    label_w, pad = 330, 4
    W = label_w + len(seeds) * (s + pad)
    H = 24 + len(prompts) * (s + pad)
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.text((4, 4), f"DDIM {steps} steps, guidance {guidance:g}; columns: seeds {seeds[0]}..{seeds[-1]}",
              fill="black", font=font)
    for r, p in enumerate(prompts):
        y = 24 + r * (s + pad)
        draw.text((4, y + s // 2 - 7), p, fill="black", font=font)
        for c in range(len(seeds)):
            im = Image.fromarray((np.clip(imgs[r * len(seeds) + c], 0, 1) * 255).round().astype(np.uint8))
            canvas.paste(im.resize((s, s), Image.Resampling.NEAREST), (label_w + c * (s + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=MODEL_DIR)
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--prompt-seed", type=int, default=1234,
                    help="seed of the prompt draw (1234: the evaluation prompts; another: validation prompts)")
    ap.add_argument("--first-seed", type=int, default=0, help="image seeds are first-seed, first-seed + 1, ...")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, nargs="+", default=[GUIDANCE])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the tables here")
    ap.add_argument("--grid", type=Path, default=None, help="also write a sample grid (first guidance scale)")
    ap.add_argument("--autoencoder", type=int, default=0, metavar="N",
                    help="also score N held-out ground-truth images and their autoencoder reconstructions")
    args = ap.parse_args(argv)

    pipe = load_pipeline(args.model, args.threads)
    prompts = shapes.eval_prompts(args.prompts, seed=args.prompt_seed)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    results = {}
    for g in args.guidance:
        t = time.time()
        imgs = generate(pipe, prompts, seeds, steps=args.steps, guidance=g)
        rows = table(prompts, imgs, args.seeds)
        results[str(g)] = rows
        print(f"\nguidance {g:g}, DDIM {args.steps} steps, {args.prompts} prompts (seed {args.prompt_seed}) x "
              f"seeds {seeds[0]}..{seeds[-1]} "
              f"({time.time() - t:.0f} s)")
        print(format_table(rows))
    if args.autoencoder:
        caps, truth, recs = autoencoder_images(pipe, args.autoencoder)
        for name, imgs in (("ground truth", truth), ("autoencoder reconstruction", recs)):
            rows = table(caps, imgs, 1)
            results[name] = rows
            print(f"\n{name}, {args.autoencoder} held-out images")
            print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.grid:
        sample_grid(pipe, args.grid, guidance=args.guidance[0], steps=args.steps)


if __name__ == "__main__":
    main()
