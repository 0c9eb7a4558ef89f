"""ldm_export: the build side of ldm-export (needs torch).

Loads a trained latent diffusion model, exports its components to ONNX, checks
them against torch, and writes a self-contained bundle for ``ldm_runtime``.
"""

__version__ = "0.1.0"
