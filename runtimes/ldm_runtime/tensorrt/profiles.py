"""Optimization profiles from the bundle's declared resolutions and batch sizes, as plain data.

A TensorRT engine with dynamic input shapes serves the shapes inside its optimization profile's
``[min, max]`` box and is tuned for ``opt``. Each component gets one profile:

1. ``batch``: 1 to 2 for the components that run the guided pair (classifier-free guidance puts the
   unconditional and conditional rows in one batch: text encoder, class embedder, UNet), tuned for
   2; 1 for the autoencoder (it decodes one latent) and for families without guidance.
2. ``height``/``width``: the manifest's ``resolution.min``/``max`` box, tuned for ``default``;
   ``latent_height``/``latent_width``: the same divided by ``latent.downsample_factor``.
3. fixed dimensions stay fixed.

One profile spanning the box (rather than one per declared size) keeps one engine per component
and one activation block sized for ``max``; every declared size lies inside the box.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError

Profile = dict[str, dict[str, list[int]]]        # input name -> {"min": shape, "opt": shape, "max": shape}
PAIRED = ("text_encoder", "class_embedder", "unet")  # components that see the guidance pair as one batch
KINDS = ("min", "opt", "max")


def guided(manifest: dict[str, Any]) -> bool:
    return str(manifest.get("guidance", {}).get("rule", "greater_than_one")) != "never"


def batch_range(manifest: dict[str, Any], component: str) -> tuple[int, int, int]:
    """(min, opt, max) batch of ``component``."""
    if component in PAIRED and guided(manifest):
        return 1, 2, 2
    return 1, 1, 1


def _dims(manifest: dict[str, Any], component: str) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every symbolic dimension name a component's shapes use."""
    res, f = manifest["resolution"], int(manifest["latent"]["downsample_factor"])
    (w0, h0), (w1, h1), (wd, hd) = res["min"], res["max"], res["default"]
    return {"batch": batch_range(manifest, component),
            "width": (w0, wd, w1), "height": (h0, hd, h1),
            "latent_width": (w0 // f, wd // f, w1 // f), "latent_height": (h0 // f, hd // f, h1 // f)}


def component_profile(manifest: dict[str, Any], component: str) -> Profile:
    """The one optimization profile of ``component``: min/opt/max of each input's shape."""
    dims = _dims(manifest, component)
    out: Profile = {}
    for name, spec in manifest["components"][component]["inputs"].items():
        shapes: dict[str, list[int]] = {k: [] for k in KINDS}
        for d in spec["shape"]:
            if isinstance(d, int):
                values = (d, d, d)
            elif d in dims:
                values = dims[d]
            else:
                raise ValueError(f"{component}.{name}: no profile rule for the dimension '{d}'")
            for k, v in zip(KINDS, values):
                shapes[k].append(int(v))
        out[name] = shapes
    return out


def bundle_profiles(manifest: dict[str, Any]) -> dict[str, list[Profile]]:
    """Every component's profiles (a list of one), for the engine key and the manifest."""
    return {c: [component_profile(manifest, c)] for c in manifest["components"]}


def contains(profile: Profile, name: str, shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` of input ``name`` lies inside the profile's [min, max] box."""
    p = profile[name]
    return len(shape) == len(p["min"]) and all(lo <= s <= hi for s, lo, hi in zip(shape, p["min"], p["max"]))


def check_shape(component: str, profile: Profile, name: str, shape: tuple[int, ...]) -> None:
    """One line when a request falls outside what the engine was built for."""
    if not contains(profile, name, shape):
        p = profile[name]
        raise UserError(f"{component}.{name}: shape {list(shape)} is outside the engine's profile "
                        f"{p['min']} … {p['max']}; try a size the bundle declares, or rebuild the bundle "
                        "with that --resolution and run ldm-run prepare again")
