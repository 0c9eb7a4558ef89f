"""Analytic prompt-adherence checker for the shapes grammar (numpy only, no learned model).

``check(prompt, image)`` parses the prompt with :func:`ldm_export.demo.shapes.parse_caption`,
segments the image into saturated foreground blobs on the (grey) background,
classifies each blob's colour from its hue, its shape from its fill ratio and
vertical mass distribution, its size from its extent, and its position from its
centroid, then compares with the prompt.

Attributes (all booleans):

* ``colour``: every prompted colour is present as a blob, and no blob of an
  unprompted colour is present.
* ``shape``: every prompted object (found by its colour) has the prompted shape.
* ``position``: the single object's centroid is in the named region, or the
  pair's centroids satisfy the relation (``True`` when the prompt names none).
* ``size``: the extent of every object whose size the prompt names matches it
  (``True`` when the prompt names none).
* ``count``: exactly as many blobs as prompted objects.
* ``overall``: all of the above.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .shapes import COLOURS, SIZE_THRESHOLD, parse_caption

CHROMA_THRESHOLD = 0.22  # foreground: max(rgb) - min(rgb) above this (in [0, 1])
MIN_AREA_FRACTION = 12 / 1024  # blobs smaller than this (fraction of the image) are ignored as specks
MAX_FOREGROUND_FRACTION = 0.6  # more foreground than this: not a shapes image (noise)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) of float rgb (..., 3)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = np.where(mx - mn > 1e-6, mx - mn, 1.0)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return (h * 60.0) % 360.0


_PALETTE_NAMES = list(COLOURS)
_PALETTE_HUES = _hue(np.array([COLOURS[c] for c in _PALETTE_NAMES], np.float64) / 255.0)


def classify_hue(h: np.ndarray) -> np.ndarray:
    """Index into ``COLOURS`` of the nearest palette hue (circular distance)."""
    d = np.abs(h[..., None] - _PALETTE_HUES)
    d = np.minimum(d, 360 - d)
    return d.argmin(-1)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (y, x) indices."""
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        q, pix = deque([(y0, x0)]), []
        while q:
            y, x = q.popleft()
            pix.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    q.append((yy, xx))
        out.append(np.array(pix))
    return out


@dataclass
class Blob:
    colour: str
    area: int
    cx: float
    cy: float
    width: int
    height: int
    fill: float  # area / bounding-box area
    bottom: float  # fraction of the area in the lower half of the bounding box
    shape: str = ""

    @property
    def extent(self) -> int:
        return max(self.width, self.height)

    @property
    def size(self) -> str:
        return "small" if self.extent < SIZE_THRESHOLD else "large"


def classify_shape(fill: float, bottom: float) -> str:
    """Shape from fill ratio (square ~1, circle ~pi/4, triangle ~1/2) and bottom-heaviness."""
    if bottom > 0.62 or fill < 0.62:
        return "triangle"
    return "square" if fill > 0.88 else "circle"


def find_blobs(image: np.ndarray) -> list[Blob]:
    """Foreground blobs (largest first) of a uint8 or [0, 1] float (H, W, 3) image."""
    img = np.asarray(image)
    img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    chroma = img.max(-1) - img.min(-1)
    fg = chroma > CHROMA_THRESHOLD
    if fg.mean() > MAX_FOREGROUND_FRACTION:
        return []
    cls = classify_hue(_hue(img))
    min_area = MIN_AREA_FRACTION * fg.size
    blobs = []
    for ci, name in enumerate(_PALETTE_NAMES):
        for pix in _components(fg & (cls == ci)):
            if len(pix) < min_area:
                continue
            ys, xs = pix[:, 0].astype(np.float64), pix[:, 1].astype(np.float64)
            y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
            hgt, wid = int(y1 - y0 + 1), int(x1 - x0 + 1)
            mid = (y0 + y1) / 2
            bottom = (float((ys > mid).sum()) + 0.5 * float((ys == mid).sum())) / len(pix)
            b = Blob(colour=name, area=len(pix), cx=float(xs.mean()) + 0.5, cy=float(ys.mean()) + 0.5,
                     width=wid, height=hgt, fill=len(pix) / (wid * hgt), bottom=bottom)
            b.shape = classify_shape(b.fill, b.bottom)
            blobs.append(b)
    blobs.sort(key=lambda b: -b.area)
    return blobs


def position_ok(position: str | None, cx: float, cy: float, size: int) -> bool:
    if position is None:
        return True
    x, y = cx / size, cy / size
    return {
        "on the left": x < 0.4,
        "on the right": x > 0.6,
        "at the top": y < 0.4,
        "at the bottom": y > 0.6,
        "in the center": abs(x - 0.5) < 0.15 and abs(y - 0.5) < 0.15,
    }[position]


def relation_ok(relation: str, a: Blob, b: Blob, size: int) -> bool:
    m = 0.05 * size  # centroids must differ by at least this much along the relation axis
    return {
        "above": b.cy - a.cy > m,
        "below": a.cy - b.cy > m,
        "to the left of": b.cx - a.cx > m,
        "to the right of": a.cx - b.cx > m,
    }[relation]


@dataclass
class Result:
    colour: bool
    shape: bool
    position: bool
    size: bool
    count: bool
    blobs: list[Blob] = field(default_factory=list)

    @property
    def colour_shape(self) -> bool:
        return self.colour and self.shape

    @property
    def overall(self) -> bool:
        return self.colour and self.shape and self.position and self.size and self.count

    def as_dict(self) -> dict:
        return {"colour": self.colour, "shape": self.shape, "position": self.position, "size": self.size,
                "count": self.count, "colour_shape": self.colour_shape, "overall": self.overall}


def check(prompt: str, image: np.ndarray) -> Result:
    """Check ``image`` (uint8 or float [0, 1], (H, W, 3)) against ``prompt``."""
    p = parse_caption(prompt)
    size = np.asarray(image).shape[0]
    blobs = find_blobs(image)
    wanted = [o["colour"] for o in p["objects"]]
    by_colour = {}
    for b in blobs:  # largest blob of each colour
        by_colour.setdefault(b.colour, b)
    found = [by_colour.get(c) for c in wanted]
    all_found = all(f is not None for f in found)
    colour = all_found and set(by_colour) == set(wanted)
    shape = all_found and all(f.shape == o["shape"] for f, o in zip(found, p["objects"]))
    size_ok = all_found and all(o["size"] is None or f.size == o["size"] for f, o in zip(found, p["objects"]))
    if not all_found:
        pos = p["position"] is None and p["relation"] is None
    elif p["relation"] is not None:
        pos = relation_ok(p["relation"], found[0], found[1], size)
    else:
        pos = position_ok(p["position"], found[0].cx, found[0].cy, size)
    return Result(colour=colour, shape=shape, position=pos, size=size_ok, count=len(blobs) == len(wanted),
                  blobs=blobs)


ATTRIBUTES = ("colour", "shape", "colour_shape", "position", "size", "count", "overall")


def score(prompts: list[str], images: list[np.ndarray]) -> dict[str, float]:
    """Mean of each attribute over (prompt, image) pairs; ``position``/``size`` only over prompts naming one."""
    rows = [(parse_caption(p), check(p, im).as_dict()) for p, im in zip(prompts, images)]
    out = {}
    for a in ATTRIBUTES:
        if a == "position":
            sel = [r for q, r in rows if q["position"] or q["relation"]]
        elif a == "size":
            sel = [r for q, r in rows if any(o["size"] for o in q["objects"])]
        else:
            sel = [r for _, r in rows]
        out[a] = float(np.mean([r[a] for r in sel])) if sel else float("nan")
    out["n"] = len(rows)
    return out
