"""The one generation request: what, together with a bundle (or the model it came from), fixes an image.

One frozen type for every place that asks for an image: ``ldm-run generate``, the golden trajectory
of a bundle (written into the manifest's ``golden`` entry and read back by ``ldm-run verify``), the
torch reference (``ldm_export.reference``), ``ldm-export parity`` and calibration. The manifest's
``golden`` entry is :meth:`Request.to_manifest` / :meth:`Request.from_manifest`; its input images
(super-resolution, inpainting) live in ``golden.npz`` as ``request/image`` and ``request/mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

# manifest "golden" keys holding request fields (besides "file", and the optional "expected")
_MANIFEST_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "eta", "width", "height",
                    "noise", "class_label", "sampler")


@dataclass(frozen=True, eq=False)
class Request:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 50
    guidance_scale: float | None = None   # None: the bundle's default scale (manifest guidance.default_scale)
    eta: float = 0.0                      # DDIM's η: 0 deterministic, 1 DDPM-like
    seed: int = 0
    width: int | None = None              # None: the bundle's default resolution
    height: int | None = None
    noise: str = "torch"                  # "torch": torch.randn's CPU stream for the seed; "numpy": numpy's own
    class_label: int | None = None        # class-conditional models
    sampler: str | None = None            # ldm_runtime.samplers name; None: the bundle's scheduler class, else DDIM
    image: np.ndarray | None = field(default=None, repr=False)  # uint8 (H, W, 3): low-res input / image to inpaint
    mask: np.ndarray | None = field(default=None, repr=False)   # uint8 (H, W) or (H, W, 3): white = repaint

    def check(self) -> None:
        """Refuse, in one line, a field no sampler can use (types, finite numbers, ranges)."""
        import math

        from .errors import UserError

        for name in ("prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise UserError(f"{name} must be text; got {type(getattr(self, name)).__name__}")
        for name, lo in (("steps", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise UserError(f"{name} must be an integer ≥ {lo}; got {v!r}")
        if self.seed >= 2**64:
            raise UserError(f"seed must be below 2**64; got {self.seed}")
        for name, lo in (("guidance_scale", None), ("eta", 0.0)):
            v = getattr(self, name)
            if v is None and name == "guidance_scale":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (lo is not None
                                                                                                   and v < lo):
                raise UserError(f"{name} must be a finite number{f' ≥ {lo:g}' if lo is not None else ''}; got {v!r}")
        for name in ("width", "height", "class_label"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise UserError(f"{name} must be an integer; got {v!r}")
        if self.noise not in ("torch", "numpy"):
            raise UserError(f"noise must be 'torch' or 'numpy'; got {self.noise!r}")
        if self.sampler is not None and not isinstance(self.sampler, str):
            raise UserError(f"sampler must be a sampler's name; got {self.sampler!r}")

    def to_manifest(self, file: str) -> dict:
        """The manifest's ``golden`` entry for this request, its arrays stored in ``file``."""
        entry: dict = {"file": file}
        for key in _MANIFEST_FIELDS:
            entry[key] = getattr(self, key)
        return entry

    def arrays(self) -> dict[str, np.ndarray]:
        """The request's input images, keyed as in ``golden.npz``."""
        return {f"request/{k}": v for k, v in (("image", self.image), ("mask", self.mask)) if v is not None}

    @classmethod
    def from_manifest(cls, entry: Mapping, arrays: Mapping[str, np.ndarray]) -> Request:
        """The inverse of :meth:`to_manifest` + :meth:`arrays`. A golden entry without a sampler is DDIM's (the
        reference's)."""
        kw = {"sampler": "ddim", **{k: entry[k] for k in _MANIFEST_FIELDS if k in entry}}
        return cls(**kw, image=arrays.get("request/image"), mask=arrays.get("request/mask"))
