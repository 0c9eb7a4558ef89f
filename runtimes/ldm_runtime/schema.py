"""The manifest's schema: every field the runtime reads, with its type, range or enumeration.

A field is checked by a small function ``check(value, where)`` that raises :class:`BundleError` with one
line naming the field, what it holds and what it must hold. :func:`validate` walks the whole manifest;
the bundle reader (:mod:`ldm_runtime.bundle`) adds what needs the folder (paths, hashes, the integrity
seal). Nothing the runtime later reads is left unchecked, so a hand-edited manifest fails here, in one
line, and never as a ``KeyError`` or a ``ZeroDivisionError`` deep in generation.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from .errors import BundleError

Check = Callable[[Any, str], None]

FAMILIES = ("text-to-image", "unconditional", "class-conditional", "super-resolution", "inpainting")
COMPONENTS = ("text_encoder", "class_embedder", "unet", "vae_decoder", "vae_encoder")
DTYPES = ("float32", "float16", "int64", "int32")
GUIDANCE_RULES = ("greater_than_one", "not_one", "never")
CONCAT = ("low_res_image", "mask", "masked_image_latents")
NOISE = ("torch", "numpy")
MAX_SIDE = 16384          # pixels: no model of this family serves larger images
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _fail(where: str, want: str, value: Any) -> BundleError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return BundleError(f"manifest.json: '{where}' must be {want}; got {shown}")


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f" in {lo}…{hi}" if hi is not None else (f" ≥ {lo}" if lo is not None else "")
            raise _fail(where, f"an integer{bounds}", v)
    return check


def number(lo: float | None = None, positive: bool = False) -> Check:
    def check(v, where):
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and (lo is None or v >= lo) and (not positive or v > 0))
        if not ok:
            raise _fail(where, "a finite number" + (" > 0" if positive else f" ≥ {lo:g}" if lo is not None else ""), v)
    return check


def text(choices: tuple[str, ...] | None = None, pattern: re.Pattern | None = None) -> Check:
    def check(v, where):
        if not isinstance(v, str) or (choices is not None and v not in choices) or \
                (pattern is not None and not pattern.fullmatch(v)):
            raise _fail(where, f"one of {', '.join(choices)}" if choices else "a sha256 hex digest" if pattern
                        else "a string", v)
    return check


def boolean(v, where):
    if not isinstance(v, bool):
        raise _fail(where, "true or false", v)


def obj(fields: dict[str, Check] | None = None, optional: dict[str, Check] | None = None) -> Check:
    """A JSON object with these required (and optional) fields; other keys are allowed (informational)."""
    def check(v, where):
        if not isinstance(v, dict):
            raise _fail(where, "an object", v)
        for key, sub in (fields or {}).items():
            if key not in v:
                raise BundleError(f"manifest.json: missing key '{where}.{key}'" if where else
                                  f"manifest.json: missing key '{key}'")
            sub(v[key], f"{where}.{key}" if where else key)
        for key, sub in (optional or {}).items():
            if key in v:
                sub(v[key], f"{where}.{key}" if where else key)
    return check


def nullable(inner: Check) -> Check:
    """``inner``, or JSON null (an optional field written as null means: none)."""
    def check(v, where):
        if v is not None:
            inner(v, where)
    return check


def list_of(item: Check, min_len: int = 0, length: int | None = None) -> Check:
    def check(v, where):
        if not isinstance(v, list) or len(v) < min_len or (length is not None and len(v) != length):
            want = f"a list of {length}" if length is not None else f"a list of at least {min_len}" if min_len else "a list"
            raise _fail(where, want, v)
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")
    return check


def dict_of(value: Check, min_len: int = 0) -> Check:
    def check(v, where):
        if not isinstance(v, dict) or len(v) < min_len:
            raise _fail(where, "an object" + (f" of at least {min_len} entries" if min_len else ""), v)
        for k, x in v.items():
            value(x, f"{where}.{k}")
    return check


def dim(v, where):
    """A tensor dimension: a positive integer, or a symbolic name."""
    if isinstance(v, str) and v:
        return
    integer(1)(v, where)


def rel_path(v, where):
    """A path inside the bundle (checked against the folder by the bundle reader)."""
    if not isinstance(v, str) or not v:
        raise _fail(where, "a path inside the bundle", v)


SIZE = list_of(integer(1, MAX_SIDE), length=2)
# "enumerated": the shapes a Core ML program serves (one list per case; the device refuses any other)
# "layout" (Core ML bundles): what each axis is, for an app that feeds the program without the runtime
LAYOUTS = ("N", "NT", "NC", "NTC", "NCHW")
TENSOR = obj({"dtype": text(DTYPES), "shape": list_of(dim, min_len=1)},
             {"enumerated": list_of(list_of(integer(1), min_len=1), min_len=1), "layout": text(LAYOUTS)})
CHUNK = obj({"file": rel_path})   # a Core ML UNet split in two: the programs, run in order
COMPONENT = obj({"file": rel_path, "inputs": dict_of(TENSOR, min_len=1), "outputs": dict_of(TENSOR, min_len=1)},
                {"external_data": nullable(rel_path), "precision": text(), "chunks": list_of(CHUNK, min_len=2)})

MANIFEST = obj({
    "family": text(FAMILIES), "target": text(), "precision": text(), "producer": obj(),
    "source": obj({"format": text(), "sha256": text(pattern=_HEX64)}),
    "backend": obj({"name": text()}), "device_constraints": obj(),
    "latent": obj({"channels": integer(1), "downsample_factor": integer(1), "scaling_factor": number(positive=True),
                   "shift_factor": number()},
                  {"decode_scale": text(("divide", "multiply_reciprocal", "none"))}),
    "autoencoder": obj({"kind": text(("kl", "vq"))}),
    "conditioning": obj({"kind": text(("text", "class", "none"))}),
    "resolution": obj({"multiple_of": integer(1, MAX_SIDE), "min": SIZE, "max": SIZE, "default": SIZE,
                       "declared": list_of(SIZE, min_len=1)}, {"sizes": text(("range", "declared"))}),
    "scheduler": obj(optional={
        "num_train_timesteps": integer(1, 100_000), "beta_start": number(0.0), "beta_end": number(0.0),
        "beta_schedule": text(), "trained_betas": nullable(list_of(number(0.0), min_len=1)),
        "clip_sample": boolean, "clip_sample_range": number(positive=True), "set_alpha_to_one": boolean,
        "steps_offset": integer(0, 1000), "prediction_type": text(), "timestep_spacing": text(),
        "rescale_betas_zero_snr": boolean, "thresholding": boolean, "dynamic_thresholding_ratio": number(0.0),
        "sample_max_value": number(positive=True), "_use_default_values": list_of(text())}),
    "components": dict_of(COMPONENT, min_len=2),
    "golden": obj({"file": rel_path, "prompt": text(), "negative_prompt": text(), "seed": integer(0, 2**64 - 1),
                   "steps": integer(1), "guidance_scale": number(), "eta": number(0.0), "width": integer(1),
                   "height": integer(1)},
                  {"noise": text(NOISE), "class_label": nullable(integer(0)), "expected": text(("torch", "bundle")),
                   "sampler": text(("ddim",))}),
    "files": dict_of(text(pattern=_HEX64), min_len=1),
}, {
    "guidance": obj({"rule": text(GUIDANCE_RULES)}, {"negative_prompt": boolean,
                                                      "default_scale": number(positive=True)}),
    "unet_concat": list_of(text(CONCAT)),
    "tokenizer": obj({"file": rel_path, "kind": text()}),
    "scheduler_class": text(),
    "adapters": list_of(obj({"file": text(), "sha256": text(pattern=_HEX64), "scale": number()})),
})


def validate(m: Any) -> None:
    """Raise :class:`BundleError` naming the first field of manifest ``m`` that the runtime could not use."""
    MANIFEST(m, "")
    _check_conditioning(m)
    _check_components(m)
    _check_resolution(m["resolution"])


def _check_conditioning(m: dict) -> None:
    cond = m["conditioning"]
    if cond["kind"] == "text":
        if "tokenizer" not in m:
            raise BundleError("manifest.json: a text-conditioned bundle needs a 'tokenizer' entry; the bundle is "
                              "incomplete: rebuild it")
        obj({"max_length": integer(1), "hidden_size": integer(1)})(cond, "conditioning")
    elif cond["kind"] == "class":
        obj({"num_classes": integer(1), "via": text(("unet", "context"))})(cond, "conditioning")
        nullable(integer(0, cond["num_classes"] - 1))(cond.get("null_class"), "conditioning.null_class")


# the inputs and outputs each component's graph has, by name (the runtime feeds and reads these)
_IO = {
    "text_encoder": ({"input_ids"}, {"text_embeddings"}),
    "class_embedder": ({"class_labels"}, {"context"}),
    "unet": ({"sample", "timestep"}, {"model_output"}),
    "vae_decoder": ({"latent"}, {"image"}),
    "vae_encoder": ({"image"}, {"latent_mean"}),
}


def _check_components(m: dict) -> None:
    comps = m["components"]
    for name, comp in comps.items():
        if name not in COMPONENTS:
            raise BundleError(f"manifest.json: unknown component '{name}'; expected one of {', '.join(COMPONENTS)}")
        ins, outs = _IO[name]
        if not ins <= set(comp["inputs"]) or not outs <= set(comp["outputs"]):
            raise BundleError(f"manifest.json: component '{name}' must have inputs {sorted(ins)} and outputs "
                              f"{sorted(outs)}; got {sorted(comp['inputs'])} and {sorted(comp['outputs'])}")
    needed = ["unet", "vae_decoder"]
    kind = m["conditioning"]["kind"]
    if kind == "text":
        needed.append("text_encoder")
    if kind == "class" and m["conditioning"].get("via") == "context":
        needed.append("class_embedder")
    if "mask" in m.get("unet_concat", []):
        needed.append("vae_encoder")
    for required in needed:
        if required not in comps:
            raise BundleError(f"manifest.json: the bundle has no '{required}' component, which its "
                              f"{m['family']} pipeline needs")


def _check_resolution(res: dict) -> None:
    k = res["multiple_of"]
    for key in ("min", "max", "default", *[f"declared[{i}]" for i in range(len(res["declared"]))]):
        w, h = res[key] if "[" not in key else res["declared"][int(key[9:-1])]
        if w % k or h % k:
            raise BundleError(f"manifest.json: 'resolution.{key}' {w}x{h} is not a multiple of "
                              f"resolution.multiple_of = {k}")
    (wmin, hmin), (wmax, hmax), (w, h) = res["min"], res["max"], res["default"]
    if not (wmin <= w <= wmax and hmin <= h <= hmax):
        raise BundleError(f"manifest.json: 'resolution.default' {w}x{h} is outside resolution.min … max "
                          f"({wmin}x{hmin} … {wmax}x{hmax})")
