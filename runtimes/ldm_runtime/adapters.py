"""Adapter packs on the device: LoRA factors keyed by the bundle's own weight names, swapped without a rebuild.

A pack (written by ``ldm-export adapter``) is a folder:

    adapter.json   format, the LoRA file's name and sha256, the bundle it is bound to (the sha256 of each
                   adapted component's files), one entry per adapted initializer (component, initializer,
                   the torch module it came from, whether the graph holds the weight transposed, its shape
                   and dtype, the rank and alpha/r), its golden trajectory, the sha256 of every file, and an
                   integrity seal (as a bundle manifest's)
    factors.npz    ``<component>/<initializer>/A`` (r, in…) and ``…/B`` (out, r…), float32
    golden.npz     ``trajectory/latents`` and ``trajectory/image`` of the bundle's golden request at scale 1

:func:`open_adapters` checks every pack against the bundle and returns an :class:`AdapterStack`, whose
:meth:`~AdapterStack.weights` are the affected initializers as ``base + Σ scale · alpha/r · B·A``
(transposed where the graph is), in float64, cast to the initializer's dtype: always from the base
weights, so switching A → B → A gives A's weights bit for bit, and scale 0 gives the base weights.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import Bundle, canonical_sha256, sha256_file
from .errors import BundleError, UserError
from .onnx_weights import Initializer, initializers

PACK_FORMAT = "ldm-adapter"
PACK_VERSION = 1
PACK_FILE = "adapter.json"


def parse_adapter(text: str) -> tuple[Path, float]:
    """``PACK[:SCALE]`` → (folder, scale)."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            return Path(text), 1.0
        if not np.isfinite(scale):
            raise UserError(f"--adapter {text}: the scale must be a finite number")
        return Path(head), scale
    return Path(text), 1.0


def pack_seal(meta: dict) -> str:
    return canonical_sha256({k: v for k, v in meta.items() if k != "integrity"})


@dataclass(frozen=True)
class Pack:
    root: Path
    meta: dict

    @property
    def name(self) -> str:
        return self.root.name

    def arrays(self, file: str) -> dict[str, np.ndarray]:
        try:
            with np.load(self.root / file, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise BundleError(f"adapter pack {self.name}: {file} cannot be read ({e}); re-copy or rewrite it") from e


def open_pack(root: str | Path) -> Pack:
    """Read a pack and check its seal and the sha256 of every file, or refuse in one line."""
    root = Path(root)
    try:
        meta = json.loads((root / PACK_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{root} is not an adapter pack: it has no {PACK_FILE} (make one with ldm-export "
                        "adapter)") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"adapter pack {root.name}: {PACK_FILE} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != PACK_FORMAT or meta.get("version") != PACK_VERSION:
        raise BundleError(f"{root} is not an ldm-adapter pack of version {PACK_VERSION}")
    if meta.get("integrity") != pack_seal(meta):
        raise BundleError(f"adapter pack {root.name}: {PACK_FILE} was edited after it was written; rewrite the "
                          "pack with ldm-export adapter")
    for rel, digest in meta["files"].items():
        p = root / rel
        if "/" in rel or rel.startswith(".") or not p.is_file():
            raise BundleError(f"adapter pack {root.name}: file {rel} is missing")
        if sha256_file(p) != digest:
            raise BundleError(f"adapter pack {root.name}: {rel} was modified (sha256 does not match); re-copy or "
                              "rewrite the pack")
    return Pack(root, meta)


def check_binding(pack: Pack, bundle: Bundle) -> None:
    """The pack was made for this bundle: the same files for every component it adapts."""
    for comp, files in pack.meta["bundle"]["components"].items():
        have = {f: bundle.manifest["files"].get(f) for f in files}
        if comp not in bundle.manifest["components"] or have != files:
            raise UserError(f"adapter pack {pack.name} was made for another bundle (its {comp} files differ from "
                            f"{bundle.root.name}'s); make one for this bundle with ldm-export adapter "
                            f"{bundle.root} --reference MODEL --lora FILE")


@dataclass
class AdapterStack:
    """The packs of one generation, with their scales, checked against ``bundle``."""

    bundle: Bundle
    packs: list[tuple[Pack, float]]
    _graphs: dict[str, dict[str, Initializer]] = field(default_factory=dict)

    @property
    def components(self) -> list[str]:
        return sorted({e["component"] for p, _ in self.packs for e in p.meta["entries"]})

    def graph(self, component: str) -> dict[str, Initializer]:
        if component not in self._graphs:
            spec = self.bundle.component(component)
            self._graphs[component] = initializers(self.bundle.path(spec["file"]))
        return self._graphs[component]

    def names(self, component: str) -> list[str]:
        return sorted({e["initializer"] for p, _ in self.packs for e in p.meta["entries"]
                       if e["component"] == component})

    def weights(self, component: str) -> dict[str, np.ndarray]:
        """The initializers of ``component`` the packs adapt, each ``base + Σ scale·alpha/r·B·A`` in the
        initializer's dtype (an int8 weight: re-quantized, with its scale)."""
        graph = self.graph(component)
        quant = {e["initializer"]: e["quantization"] for p, _ in self.packs for e in p.meta["entries"]
                 if e["component"] == component and e.get("quantization")}
        total: dict[str, np.ndarray] = {}
        for name in self.names(component):
            if name not in graph:
                raise BundleError(f"{component}: the bundle's graph has no initializer '{name}'")
            total[name] = graph[name].read().astype(np.float64)
            if name in quant:   # int8: the dequantized weight
                total[name] = total[name] * _scale(graph, quant[name], total[name].ndim)
        for pack, scale in self.packs:
            factors = pack.arrays("factors.npz")
            for e in pack.meta["entries"]:
                if e["component"] == component:
                    total[e["initializer"]] += scale * _delta(pack, e, factors)
        out = {}
        for n, v in total.items():
            if n in quant:
                out.update(requantize(graph, n, quant[n], v))
            else:
                out[n] = v.astype(graph[n].dtype)
        return out


def _scale(graph: dict[str, Initializer], q: dict, ndim: int) -> np.ndarray:
    s = graph[q["scale"]].read().astype(np.float64)
    shape = [1] * ndim
    shape[q["axis"]] = -1
    return s.reshape(shape) if s.ndim else s


def requantize(graph: dict[str, Initializer], name: str, q: dict, w: np.ndarray) -> dict[str, np.ndarray]:
    """An adapted int8 weight in the bundle's scheme (symmetric, ±127, one scale per channel of its axis): a
    channel keeps its scale while the adapted weights fit its range, else the scale grows to fit; the
    activations' scales are left as they are. Returns the int8 weight and its scale."""
    old = _scale(graph, q, w.ndim)
    reduce = tuple(i for i in range(w.ndim) if i != q["axis"])
    peak = np.abs(w).max(axis=reduce, keepdims=True) if w.ndim else np.abs(w)
    scale = np.where(peak <= 127 * old, old, peak / 127)
    scale_init = graph[q["scale"]]
    scale = scale.astype(scale_init.dtype)
    quantized = np.clip(np.rint(w / scale.astype(np.float64)), -127, 127).astype(np.int8)
    return {name: quantized, q["scale"]: scale.reshape(scale_init.shape)}


def _delta(pack: Pack, e: dict, factors: dict[str, np.ndarray]) -> np.ndarray:
    key = f"{e['component']}/{e['initializer']}"
    A, B = factors.get(key + "/A"), factors.get(key + "/B")
    shape = tuple(e["shape"])
    out_in = (shape[::-1] if e["transposed"] else shape)
    if A is None or B is None or A.shape[0] != e["rank"] or B.shape[1] != e["rank"] \
            or B.shape[0] * int(np.prod(A.shape[1:])) != int(np.prod(shape)) or B.shape[0] != out_in[0]:
        raise UserError(f"adapter pack {pack.name}: the factors of {key} (rank {e['rank']}) do not fit its weight "
                        f"of shape {list(shape)}; the pack is damaged or for another model")
    d = e["scaling"] * (B.reshape(B.shape[0], -1).astype(np.float64) @ A.reshape(A.shape[0], -1).astype(np.float64))
    d = d.reshape(out_in)
    return d.T if e["transposed"] else d


def open_adapters(bundle: Bundle, given: list[tuple[str | Path, float]]) -> AdapterStack:
    """Open and check every pack of ``given`` ((folder, scale) pairs) against ``bundle``."""
    packs = []
    for path, scale in given:
        pack = open_pack(path)
        check_binding(pack, bundle)
        packs.append((pack, float(scale)))
    stack = AdapterStack(bundle, packs)
    for comp in stack.components:
        graph = stack.graph(comp)
        for pack, _ in packs:
            for e in pack.meta["entries"]:
                init = graph.get(e["initializer"]) if e["component"] == comp else None
                q = e.get("quantization") if e["component"] == comp else None
                if q and q.get("scale") not in graph:
                    raise UserError(f"adapter pack {pack.name}: {comp} weight '{e['initializer']}' has no scale "
                                    f"'{q.get('scale')}' in the bundle's graph")
                if e["component"] == comp and (init is None or list(init.shape) != e["shape"]):
                    raise UserError(f"adapter pack {pack.name}: {comp} weight '{e['initializer']}' of shape "
                                    f"{e['shape']} is not in the bundle's graph with that shape")
    return stack
