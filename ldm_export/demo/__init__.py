"""The embedded demo model: a small latent diffusion model trained here on procedural shapes.

* :mod:`.shapes`: seeded procedural images + captions (numpy + Pillow only);
* :mod:`.adherence`: analytic prompt-adherence checker (numpy only);
* :mod:`.train`: trains the autoencoder, text encoder and UNet, saves ``model/``;
* :mod:`.evaluate`: scores the torch pipeline's images with the checker;
* ``model/``: the trained diffusers ``StableDiffusionPipeline`` folder (see docs/demo_model.md).
"""

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"

# Classifier-free guidance scale the demo model is evaluated and shown at, chosen on validation prompts
# (``python -m ldm_export.demo.evaluate --prompt-seed 4321 --first-seed 100 --guidance ...``), not on
# the evaluation prompts; ``ldm-export build`` records it in demo bundles. See docs/demo_model.md.
GUIDANCE = 1.5

# The demo model's DDIM config: Stable Diffusion 1.x's (scaled-linear betas 0.00085 … 0.012, leading spacing
# with steps_offset 1, the last step to alpha_0), which is the original CompVis DDIM sampler.
SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": False,
    "steps_offset": 1, "prediction_type": "epsilon", "timestep_spacing": "leading",
}


def is_demo_model(path: str | Path) -> bool:
    """Whether ``path`` is the embedded demo model's folder."""
    return Path(path).resolve() == MODEL_DIR.resolve()
