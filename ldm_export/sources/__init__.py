"""Model sources other than a diffusers pipeline folder, converted offline into diffusers modules.

``compvis``: original CompVis / Stability single-file checkpoints (``.ckpt`` or
``.safetensors``) with their original YAML config.
"""
