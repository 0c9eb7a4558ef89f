"""Procedural "shapes" images with captions from a small grammar (numpy + Pillow only).

Each image shows one or two flat-coloured shapes (circle, square, triangle) in
one of four colours on a plain grey background with a faint linear gradient.
Every image comes with a caption from the grammar below and with structured
metadata, so that prompt adherence can be checked analytically
(:mod:`ldm_export.demo.adherence`).

Grammar::

    caption   := single | pair
    single    := object [" " position]
    pair      := object " " relation " " object
    object    := "a " [size " "] colour " " shape
    size      := "small" | "large"
    colour    := "red" | "green" | "blue" | "yellow"
    shape     := "circle" | "square" | "triangle"
    position  := "on the left" | "on the right" | "at the top" | "at the bottom" | "in the center"
    relation  := "above" | "below" | "to the left of" | "to the right of"

The two objects of a pair always have different colours. Positions and
relations refer to the shapes' centroids (image coordinates, y down).
Nothing here uses torch, so the torch-free runtime side can use it too.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (45, 85, 225),
    "yellow": (230, 205, 35),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
RELATIONS = ("above", "below", "to the left of", "to the right of")

# Shape extents (side / diameter) in pixels of a 32 x 32 image, by size word.
SIZE_RANGE_SINGLE = {"small": (9.5, 11), "large": (13.5, 16)}
SIZE_RANGE_PAIR = {"small": (9.5, 11), "large": (13, 14)}
SIZE_THRESHOLD = 12.25  # extents below are "small", above "large" (the checker uses the same split)

P_PAIR = 0.5  # fraction of two-object scenes
P_SIZE_WORD = 0.5  # probability that a size word is in the caption
P_POSITION = 0.8  # probability that a single object's caption names a position
SUPERSAMPLE = 4


@dataclass
class ShapeObject:
    colour: str
    shape: str
    size: str  # "small" | "large" (always set; the caption may omit it)
    extent: float  # side / diameter in pixels
    cx: float  # centroid-ish centre in pixels (x right, y down)
    cy: float
    size_in_caption: bool = True


@dataclass
class Scene:
    objects: list[ShapeObject]
    position: str | None = None  # single-object scenes
    relation: str | None = None  # two-object scenes: objects[0] <relation> objects[1]
    background: float = 0.5
    gradient: tuple[float, float] = (0.0, 0.0)
    size: int = IMAGE_SIZE
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- captions

def object_phrase(colour: str, shape: str, size: str | None) -> str:
    return "a " + (size + " " if size else "") + colour + " " + shape


def caption_of(scene: Scene) -> str:
    objs = scene.objects
    phrases = [object_phrase(o.colour, o.shape, o.size if o.size_in_caption else None) for o in objs]
    if len(objs) == 1:
        return phrases[0] + (" " + scene.position if scene.position else "")
    return phrases[0] + " " + scene.relation + " " + phrases[1]


_OBJ = r"a (?:(small|large) )?(red|green|blue|yellow) (circle|square|triangle)"
_SINGLE_RE = re.compile("^" + _OBJ + r"(?: (" + "|".join(POSITIONS) + r"))?$")
_PAIR_RE = re.compile("^" + _OBJ + r" (" + "|".join(RELATIONS) + r") " + _OBJ + "$")


def parse_caption(text: str) -> dict:
    """Parse a caption of the grammar into a dict.

    Returns ``{"objects": [{"colour", "shape", "size"}...], "position", "relation"}``
    where ``size``, ``position`` and ``relation`` may be ``None``. Raises
    ``ValueError`` for text outside the grammar.
    """
    t = " ".join(text.strip().lower().rstrip(".").split())
    m = _SINGLE_RE.match(t)
    if m:
        size, colour, shape, pos = m.groups()
        return {"objects": [{"colour": colour, "shape": shape, "size": size}], "position": pos, "relation": None}
    m = _PAIR_RE.match(t)
    if m:
        s1, c1, h1, rel, s2, c2, h2 = m.groups()
        return {"objects": [{"colour": c1, "shape": h1, "size": s1}, {"colour": c2, "shape": h2, "size": s2}],
                "position": None, "relation": rel}
    raise ValueError(f"caption outside the shapes grammar: {text!r}")


def format_caption(parsed: dict) -> str:
    """Inverse of :func:`parse_caption`."""
    objs = parsed["objects"]
    phrases = [object_phrase(o["colour"], o["shape"], o.get("size")) for o in objs]
    if len(objs) == 1:
        return phrases[0] + (" " + parsed["position"] if parsed.get("position") else "")
    return phrases[0] + " " + parsed["relation"] + " " + phrases[1]


def all_prompts() -> list[str]:
    """Every caption of the grammar (216 single-object + 3888 two-object ones)."""
    sizes = (None,) + SIZES
    objs = list(itertools.product(sizes, COLOURS, SHAPES))
    out = [object_phrase(c, s, z) + (" " + p if p else "") for (z, c, s) in objs for p in (None,) + POSITIONS]
    for (z1, c1, s1), rel, (z2, c2, s2) in itertools.product(objs, RELATIONS, objs):
        if c1 != c2:
            out.append(object_phrase(c1, s1, z1) + " " + rel + " " + object_phrase(c2, s2, z2))
    return out


def eval_prompts(n: int = 100, seed: int = 1234) -> list[str]:
    """``n`` distinct prompts drawn (deterministically) from the training caption distribution."""
    rng = np.random.default_rng(seed)
    seen: list[str] = []
    while len(seen) < n:
        c = caption_of(sample_scene(rng))
        if c not in seen:
            seen.append(c)
    return seen


def vocabulary() -> list[str]:
    """All words the grammar uses."""
    words = {"a"} | set(SIZES) | set(COLOURS) | set(SHAPES)
    for p in POSITIONS + RELATIONS:
        words |= set(p.split())
    return sorted(words)


# ----------------------------------------------------------------------------- scenes

def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _single_centre(rng, position: str | None, extent: float, size: int) -> tuple[float, float]:
    r = extent / 2
    lo, hi = r + 1, size - r - 1
    third, two_thirds = size / 3, 2 * size / 3
    cx, cy = _u(rng, lo, hi), _u(rng, lo, hi)
    if position == "on the left":
        cx = _u(rng, lo, max(lo, third))
    elif position == "on the right":
        cx = _u(rng, min(hi, two_thirds), hi)
    elif position == "at the top":
        cy = _u(rng, lo, max(lo, third))
    elif position == "at the bottom":
        cy = _u(rng, min(hi, two_thirds), hi)
    elif position == "in the center":
        cx, cy = _u(rng, size / 2 - 2, size / 2 + 2), _u(rng, size / 2 - 2, size / 2 + 2)
    return cx, cy


def _pair_centres(rng, relation: str, e1: float, e2: float, size: int):
    """Centres for objects 1 and 2 with ``1 <relation> 2`` and no overlap."""
    gap = (e1 + e2) / 2 + 2
    for _ in range(100):
        a_lo, a_hi = e1 / 2 + 1, size - e1 / 2 - 1
        b_lo, b_hi = e2 / 2 + 1, size - e2 / 2 - 1
        # along the relation axis, coordinate of the first object is smaller for above/left
        first_small = relation in ("above", "to the left of")
        if first_small:
            p1 = _u(rng, a_lo, b_hi - gap)
            p2 = _u(rng, max(b_lo, p1 + gap), b_hi)
        else:
            p2 = _u(rng, b_lo, a_hi - gap)
            p1 = _u(rng, max(a_lo, p2 + gap), a_hi)
        q1, q2 = _u(rng, a_lo, a_hi), _u(rng, b_lo, b_hi)
        if abs(q1 - q2) > abs(p1 - p2) * 0.8:  # keep the relation the dominant displacement
            continue
        if relation in ("above", "below"):
            return (q1, p1), (q2, p2)
        return (p1, q1), (p2, q2)
    raise RuntimeError("could not place the pair")  # pragma: no cover


def sample_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> Scene:
    """Sample a scene (objects, caption choices, background) from ``rng``."""
    colours = list(COLOURS)
    pair = rng.random() < P_PAIR
    n = 2 if pair else 1
    cidx = rng.choice(len(colours), size=n, replace=False)
    objs = []
    ranges = SIZE_RANGE_PAIR if pair else SIZE_RANGE_SINGLE
    for i in range(n):
        sz = SIZES[int(rng.integers(2))]
        lo, hi = ranges[sz]
        objs.append(ShapeObject(
            colour=colours[int(cidx[i])], shape=SHAPES[int(rng.integers(len(SHAPES)))], size=sz,
            extent=_u(rng, lo, hi) * size / IMAGE_SIZE, cx=0.0, cy=0.0,
            size_in_caption=bool(rng.random() < P_SIZE_WORD)))
    scene = Scene(objects=objs, background=_u(rng, 0.25, 0.85),
                  gradient=(_u(rng, -0.06, 0.06), _u(rng, -0.06, 0.06)), size=size)
    if pair:
        scene.relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        (objs[0].cx, objs[0].cy), (objs[1].cx, objs[1].cy) = _pair_centres(
            rng, scene.relation, objs[0].extent, objs[1].extent, size)
    else:
        scene.position = POSITIONS[int(rng.integers(len(POSITIONS)))] if rng.random() < P_POSITION else None
        objs[0].cx, objs[0].cy = _single_centre(rng, scene.position, objs[0].extent, size)
    # small per-image colour jitter, stored so that rendering is a pure function of the scene
    scene.extra["jitter"] = [rng.integers(-15, 16, size=3).tolist() for _ in objs]
    return scene


def render(scene: Scene) -> np.ndarray:
    """Render a scene to a uint8 (H, W, 3) array (4x supersampled, box-filtered)."""
    s = scene.size
    S = s * SUPERSAMPLE
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S - 0.5
    bg = scene.background + scene.gradient[0] * xx + scene.gradient[1] * yy
    canvas = np.repeat((np.clip(bg, 0, 1) * 255)[..., None], 3, axis=2).astype(np.uint8)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    jit = scene.extra.get("jitter", [[0, 0, 0]] * len(scene.objects))
    for o, j in zip(scene.objects, jit):
        col = tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(COLOURS[o.colour], j))
        r = o.extent / 2 * SUPERSAMPLE
        cx, cy = o.cx * SUPERSAMPLE, o.cy * SUPERSAMPLE
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        elif o.shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=col)
        else:  # upright isosceles triangle in the same (square) bounding box
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=col)
    img = img.resize((s, s), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def sample(rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[np.ndarray, str, dict]:
    """One training example: (uint8 image (H, W, 3), caption, metadata dict)."""
    scene = sample_scene(rng, size)
    return render(scene), caption_of(scene), scene.to_dict()


def make_dataset(n: int, seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[str], list[dict]]:
    """``n`` examples from ``np.random.default_rng(seed)``: images (n, H, W, 3) uint8, captions, metadata."""
    rng = np.random.default_rng(seed)
    imgs = np.empty((n, size, size, 3), np.uint8)
    caps, metas = [], []
    for i in range(n):
        imgs[i], c, m = sample(rng, size)
        caps.append(c)
        metas.append(m)
    return imgs, caps, metas


def render_prompt(prompt: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A ground-truth image for ``prompt`` (rejection-free: builds the scene from the parse)."""
    p = parse_caption(prompt)
    while True:  # sample scenes of the right kind and overwrite the attributes
        scene = sample_scene(rng, size)
        if len(scene.objects) == len(p["objects"]):
            break
    pair = len(p["objects"]) == 2
    ranges = SIZE_RANGE_PAIR if pair else SIZE_RANGE_SINGLE
    for o, q in zip(scene.objects, p["objects"]):
        o.colour, o.shape = q["colour"], q["shape"]
        o.size_in_caption = q["size"] is not None
        if q["size"] is not None and q["size"] != o.size:
            o.size = q["size"]
            o.extent = _u(rng, *ranges[o.size]) * size / IMAGE_SIZE
    if pair:
        scene.relation = p["relation"]
        (scene.objects[0].cx, scene.objects[0].cy), (scene.objects[1].cx, scene.objects[1].cy) = _pair_centres(
            rng, scene.relation, scene.objects[0].extent, scene.objects[1].extent, size)
    else:
        scene.position = p["position"]
        o = scene.objects[0]
        o.cx, o.cy = _single_centre(rng, scene.position, o.extent, size)
    return render(scene)
