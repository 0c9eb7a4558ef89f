"""The image sizes a build serves: parsed from ``--resolution WxH``, checked against the model's size step."""

from __future__ import annotations

from ldm_runtime.errors import UserError
from ldm_runtime.resolution import check_multiple

from .model import LoadedModel


def parse_resolution(text: str) -> tuple[int, int]:
    """'512x768' → (512, 768) (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"resolution '{text}' is not WIDTHxHEIGHT (e.g. 512x512)") from None
    if w <= 0 or h <= 0:
        raise UserError(f"resolution '{text}' must be positive")
    return w, h


def check_resolutions(model: LoadedModel, sizes: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """The sizes to serve (the model's native size when none is given), each a multiple of its size step
    and small enough to fit in this machine's memory (:func:`ldm_export.memory.check_sizes_fit`)."""
    from .memory import check_sizes_fit

    sizes = list(sizes) or [model.default_resolution]
    for w, h in sizes:
        check_multiple(w, h, model.size_multiple, model.latent.downsample_factor)
    check_sizes_fit(model, sizes)
    return sizes


def resolution_entry(model: LoadedModel, sizes: list[tuple[int, int]], serves: str = "range") -> dict:
    """The manifest's ``resolution``: the first size is the default; ``serves`` "range": any multiple of the
    step within the declared sizes' range is accepted; "declared": only the declared sizes (the target's
    programs enumerate their shapes)."""
    return {"multiple_of": model.size_multiple, "declared": [list(s) for s in sizes], "sizes": serves,
            "default": list(sizes[0]), "min": [min(w for w, _ in sizes), min(h for _, h in sizes)],
            "max": [max(w for w, _ in sizes), max(h for _, h in sizes)]}
