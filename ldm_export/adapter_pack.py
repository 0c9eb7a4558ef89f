"""``ldm-export adapter``: a LoRA's factors keyed by a bundle's own weight names (the pack of
:mod:`ldm_runtime.adapters`), so a device swaps adapters without a rebuild.

``torch.onnx.export`` renames weights (a Linear's weight becomes an anonymous MatMul initializer, transposed)
and merges equal ones, so the map from a LoRA's target modules to initializers is made here, where both
sides are known, by value: the module's weight (cast to the initializer's dtype; as it is, or transposed)
must equal exactly one initializer of the bundle's graph, and no other weight of the model may have the same
value (the exporter would have shared the initializer). A module that does not map is refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ldm_runtime.adapters import PACK_FILE, PACK_FORMAT, PACK_VERSION, pack_seal
from ldm_runtime.bundle import open_bundle, sha256_file
from ldm_runtime.errors import UserError
from ldm_runtime.jsonio import dumps
from ldm_runtime.onnx_weights import initializers
from ldm_runtime.request import Request

from .bundle import check_replaceable, staging_folder
from .loading import load_model
from .lora import Factor, LoraSpec, fuse_adapters, read_factors


def is_pack(path: Path) -> bool:
    try:
        return json.loads((path / PACK_FILE).read_text()).get("format") == PACK_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _weight_index(module) -> dict[tuple, int]:
    """How many of the module's weights hold each value (by shape and bytes, either orientation)."""
    counts: dict[tuple, int] = {}
    for p in module.state_dict().values():
        a = p.detach().float().numpy()
        for v in {(a.shape, a.tobytes()), (a.T.shape, np.ascontiguousarray(a.T).tobytes())} if a.ndim == 2 else \
                {(a.shape, a.tobytes())}:
            counts[v] = counts.get(v, 0) + 1
    return counts


def _dequantized(graph_file: Path) -> dict[str, dict]:
    """int8 weights feeding a DequantizeLinear: quantized initializer → its scale, zero point and axis."""
    import onnx

    model = onnx.load(str(graph_file), load_external_data=False)
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) >= 2:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            out[node.input[0]] = {"scale": node.input[1], "zero_point": node.input[2] if len(node.input) > 2
                                  else None, "axis": int(axis)}
    return out


def _hits(w: np.ndarray, by_shape: dict, graph: dict, dq: dict) -> list[tuple]:
    """(initializer, transposed, quantization or None) of every initializer holding ``w``: equal after a cast
    to its dtype, or, for an int8 weight, within half a quantization step of its DequantizeLinear's output."""
    hits = []
    for transposed, value in ((False, w), (True, w.T)) if w.ndim == 2 else ((False, w),):
        for init in by_shape.get(value.shape, []):
            if init.dtype.kind == "f" and np.array_equal(init.read(), value.astype(init.dtype)):
                hits.append((init, transposed, None))
            elif init.dtype == np.int8 and init.name in dq:
                q = dq[init.name]
                scale = _per_axis(graph[q["scale"]].read().astype(np.float64), q["axis"], value.ndim)
                if np.all(np.abs(init.read() * scale - value) <= 0.5 * scale * 1.001 + 1e-12):
                    hits.append((init, transposed, q))
    return hits


def _per_axis(scale: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape) if scale.ndim else scale


def map_component(module, graph_file: Path, factors: dict[str, Factor], component: str) -> list[dict]:
    """One pack entry per module of ``factors``: the initializer holding its weight, and whether transposed."""
    graph = initializers(graph_file)
    by_shape: dict[tuple, list] = {}
    for init in graph.values():
        by_shape.setdefault(init.shape, []).append(init)
    dq = _dequantized(graph_file) if any(i.dtype == np.int8 for i in graph.values()) else {}
    shared = _weight_index(module)
    entries, unmapped = [], []
    for name, f in sorted(factors.items()):
        w = module.get_submodule(name).weight.detach().float().numpy()
        hits = _hits(w, by_shape, graph, dq)
        twins = shared.get((w.shape, w.tobytes()), 0)
        if len(hits) != 1 or twins > 1:
            unmapped.append(f"{component}.{name}" + (" (its weight is shared with another module)" if twins > 1
                                                     else f" ({len(hits)} initializers match)"))
            continue
        init, transposed, quant = hits[0]
        entries.append({"component": component, "initializer": init.name, "module": name, "transposed": transposed,
                        "shape": list(init.shape), "dtype": str(init.dtype), "rank": f.rank, "scaling": f.scaling,
                        **({"quantization": quant} if quant else {})})
    if unmapped:
        raise UserError(f"cannot map the LoRA's target modules to the bundle's weights: {', '.join(unmapped[:4])}"
                        f"{' …' if len(unmapped) > 4 else ''}; merge it at build instead (ldm-export build --lora)")
    return entries


def _check_bundle(bundle, model) -> None:
    m = bundle.manifest
    if m["backend"]["name"] not in ("onnxruntime", "tensorrt"):
        raise UserError(f"{bundle.root.name} is a {m['target']} bundle: Core ML takes adapters at build "
                        "(ldm-export build --target coreml --lora FILE), not as packs")
    if m.get("adapters"):
        raise UserError(f"{bundle.root.name} has adapters merged at build; make packs for a bundle without them")
    if m["source"]["sha256"] != model.source.sha256:
        raise UserError(f"{bundle.root.name} was not built from this --reference (source sha256 differs)")


def _golden(bundle, model, spec: LoraSpec, report) -> tuple[dict[str, np.ndarray], str]:
    """The pack's golden trajectory at scale 1: torch with the LoRA fused (fp32 bundles), or the runtime with
    the factors swapped in (fp16 bundles: their golden vectors are their own, as the bundle's)."""
    m = bundle.manifest
    with np.load(bundle.path(m["golden"]["file"])) as z:
        req = Request.from_manifest(m["golden"], {k: z[k] for k in z.files})
    if m["precision"] == "fp32":
        from .reference import reference_generate

        report("recording the golden trajectory with the LoRA fused in torch")
        fuse_adapters(model, [LoraSpec(spec.path, 1.0)])
        run = reference_generate(model, req)
        return {"trajectory/latents": np.stack(run.latents), "trajectory/image": run.image}, "torch"
    return {}, "bundle"


def write_pack(bundle_dir: Path, reference: Path, lora: Path, out: Path, overwrite: bool = False,
               report: Callable[[str], None] = lambda msg: None) -> dict:
    bundle = open_bundle(bundle_dir)
    check_replaceable(out, overwrite, kind="adapter pack", is_kind=is_pack, protected=[bundle_dir, reference, lora])
    model = load_model(reference)
    _check_bundle(bundle, model)
    spec = LoraSpec(Path(lora))
    report(f"reading {lora}")
    factors = read_factors(model, spec)
    entries, arrays, binding = [], {}, {}
    for comp, facs in factors.items():
        entry = bundle.component(comp)
        comp_entries = map_component(getattr(model.modules, comp), bundle.path(entry["file"]), facs, comp)
        for e in comp_entries:
            f = facs[e["module"]]
            arrays[f"{comp}/{e['initializer']}/A"] = f.A.astype(np.float32)
            arrays[f"{comp}/{e['initializer']}/B"] = f.B.astype(np.float32)
        entries += comp_entries
        binding[comp] = {rel: bundle.manifest["files"][rel] for rel in bundle.component_files(comp)}
        report(f"{comp}: {len(comp_entries)} weights mapped to the bundle's initializers")
    with staging_folder(out) as staging:
        np.savez(staging / "factors.npz", **arrays)
        golden, expected = _golden(bundle, model, spec, report)
        meta = {"format": PACK_FORMAT, "version": PACK_VERSION,
                "lora": {"file": spec.path.name, "sha256": sha256_file(spec.path)},
                "bundle": {"source_sha256": bundle.manifest["source"]["sha256"], "components": binding},
                "entries": entries}
        if expected == "bundle":
            golden = _runtime_golden(bundle, staging, meta)
        np.savez_compressed(staging / "golden.npz", **golden)
        meta["golden"] = {"file": "golden.npz", "scale": 1.0, "expected": expected}
        meta["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.name != PACK_FILE}
        meta["integrity"] = pack_seal(json.loads(dumps(meta)))
        (staging / PACK_FILE).write_text(dumps(meta, indent=1) + "\n")
    return meta


def _runtime_golden(bundle, staging: Path, meta: dict) -> dict[str, np.ndarray]:
    """The golden trajectory of a bundle whose vectors are its own: ONNX Runtime on CPU with the factors in."""
    from ldm_runtime.adapters import AdapterStack, Pack
    from ldm_runtime.pipeline import Components, Pipeline
    from ldm_runtime.runners import RunnerOptions
    from ldm_runtime.verify import golden_request, load_golden

    pipe = Pipeline(bundle, Components(bundle, backend="onnxruntime", options=RunnerOptions(provider="cpu")))
    stack = AdapterStack(bundle, [(Pack(staging, meta), 1.0)])
    for name in stack.components:
        pipe.components.runner(name).swap_weights(stack.weights(name))
    result = pipe.generate(golden_request(pipe, load_golden(bundle)), trace=True)
    return {"trajectory/latents": np.stack(result.latents), "trajectory/image": result.image}
