"""Regenerate the reference images of the shipped demo model (run after retraining it):

    python -m tests.demo.make_reference_images

They are diffusers' own StableDiffusionPipeline outputs (DDIM from the model's config), so the test
that compares ldm-run against them checks the model and the runtime at once.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ldm_export.demo import GUIDANCE
from ldm_export.loading import load_model
from ldm_export.reference import Request, reference_generate

CASES = (("a red circle", 0), ("a blue triangle on the right", 1), ("a red circle above a blue square", 2))
STEPS = 20
OUT = Path(__file__).parent / "reference"


def reference_images():
    from ldm_export.demo import MODEL_DIR

    model = load_model(MODEL_DIR)
    for prompt, seed in CASES:
        run = reference_generate(model, Request(prompt=prompt, steps=STEPS, guidance_scale=GUIDANCE, seed=seed,
                                                width=32, height=32))
        yield prompt, seed, run.image


def file_name(prompt: str, seed: int) -> str:
    return f"{prompt.replace(' ', '_')}-seed{seed}.png"


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for prompt, seed, image in reference_images():
        Image.fromarray(image).save(OUT / file_name(prompt, seed))
        print("wrote", OUT / file_name(prompt, seed))
