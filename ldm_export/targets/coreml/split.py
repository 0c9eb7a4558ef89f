"""Split a UNet whose weights exceed what iOS loads comfortably (1 GiB) into two chunks, as Apple's
ml-stable-diffusion ships Stable Diffusion on iPhones; the runner chains them.

``coremltools.models.utils.bisect_model`` does not work on these programs: with dynamic shapes, values
computed from the input's shape (the batch, the up-sampling sizes) are scalars that cross any cut in the
middle, and a Core ML input cannot be rank 0 ("Rank-0 (input floor_div_1_to_fp16) is unsupported"). Its
chunk also loses the enumerated shapes (inputs come out as ranges 1...2). So, with bisect_model's own parts:

1. The cut: coremltools' choice (the first single-consumer op past half of the weights, by size).
2. Every rank-0 value that crosses the cut is widened to shape [1] before the cut and narrowed back after it.
3. coremltools' chunk builders make the two programs (fp16 values crossing are cast to fp32, as in
   bisect_model), converted to ML Programs of the source's specification version.
4. The reference evaluator runs chunk 1 at every case of the source record: the shapes of the values that
   cross become chunk 2's enumerated (or ranged, below iOS 18) input shapes; both chunks' inputs are described
   the way :mod:`.convert` describes a component's.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np

from ldm_runtime.runners.coreml_reference.evaluate import evaluate
from ldm_runtime.runners.coreml_reference.program import from_mil

from .convert import _flexibility
from .package import package_size, save, weights_size

IOS_WEIGHT_LIMIT = 1 << 30   # bytes of weights above which an iOS UNet ships in two chunks


def _load_main(mlpackage: Path):
    """A fresh MIL program of the package, with a mutable op list (as bisect_model prepares it)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto

    model = ct.models.MLModel(str(mlpackage), skip_model_load=True)
    spec = model.get_spec()
    program = milproto.load(spec, spec.specificationVersion, model.weights_dir)
    program.functions["main"].operations = list(program.functions["main"].operations)
    return program, spec.specificationVersion


def _widen_scalars(program, incision) -> int:
    """Step 2 on ``program``; returns the cut's index afterwards (the inserted ops move it)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.models.utils import _get_first_chunk_outputs

    block = program.functions["main"]
    idx = block.operations.index(incision)
    for var in [v for v in _get_first_chunk_outputs(block, idx) if v.rank == 0]:
        ops = block.operations
        if var.op is incision:
            raise NotImplementedError(f"the cut {incision.name} produces the scalar {var.name}")
        with block:
            wide = mb.expand_dims(x=var, axes=[0], before_op=ops[ops.index(var.op) + 1], name=f"{var.name}_vec")
            narrow = mb.squeeze(x=wide, axes=[0], before_op=ops[ops.index(incision) + 1], name=f"{var.name}_val")
        block.replace_uses_of_var_after_op(anchor_op=narrow.op, old_var=var, new_var=narrow)
    block.operations = list(block.operations)
    return block.operations.index(incision)


def _chunk_programs(mlpackage: Path):
    """Steps 1-3: the two chunks as MIL programs, and the specification version."""
    from coremltools.models.utils import _get_op_idx_split_location, _make_first_chunk_prog, _make_second_chunk_prog

    first, version = _load_main(mlpackage)
    idx, _, _ = _get_op_idx_split_location(first)
    incision_name = first.functions["main"].operations[idx].name
    chunk1 = _make_first_chunk_prog(first, _widen_scalars(first, first.functions["main"].operations[idx]))
    second, _ = _load_main(mlpackage)
    incision = next(op for op in second.functions["main"].operations if op.name == incision_name)
    chunk2 = _make_second_chunk_prog(second, _widen_scalars(second, incision))
    return chunk1, chunk2, version


def _to_model(program, version: int):
    import coremltools as ct
    from coremltools.converters.mil.converter import mil_convert

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mil_convert(program, convert_to="mlprogram", convert_from="milinternal",
                           specification_version=version, compute_units=ct.ComputeUnit.CPU_ONLY,
                           skip_model_load=True)


def _case_feeds(record: dict, i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {k: (np.zeros(s["enumerated"][i], np.int32) if s["dtype"].startswith("int")
                else rng.standard_normal(s["enumerated"][i]).astype(np.float32))
            for k, s in record["inputs"].items()}


def _chunk_shapes(chunk1, record: dict) -> list[dict[str, list]]:
    """Step 4: per case, the shape of every chunk input and output (by name), from the reference evaluator."""
    first = from_mil(chunk1, "unet chunk 1")
    n_cases = len(next(iter(record["inputs"].values()))["enumerated"])
    cases = []
    for i in range(n_cases):
        feeds = _case_feeds(record, i)
        out = evaluate(first, {k: feeds[k] for k in first.inputs}, arithmetic="fp32")
        shapes = {k: list(v.shape) for k, v in {**feeds, **out}.items()}
        shapes.update({k: list(v["enumerated"][i]) for k, v in record["outputs"].items()})
        cases.append(shapes)
    return cases


def _describe(model, cases: list[dict[str, list]], deployment_target: str):
    """Set each input's default shape and its enumerated shapes (or ranges) in the model description."""
    import coremltools as ct
    from coremltools.models.neural_network import flexible_shape_utils as fsu

    spec = model.get_spec()
    names = [f.name for f in spec.description.input]
    flexibility = _flexibility([{k: tuple(c[k]) for k in names} for c in cases], deployment_target)
    for feature in spec.description.input:
        shapes = [tuple(c[feature.name]) for c in cases]
        array = feature.type.multiArrayType
        array.ClearField("shape")
        array.shape.extend(shapes[0])
        if flexibility[feature.name] == "enumerated":
            fsu._add_multiarray_ndshape_enumeration_for_feature(feature, shapes, allow_duplicate_shapes=True)
        elif flexibility[feature.name] == "range":
            fsu._set_multiarray_ndshape_range_for_feature(
                feature, [min(s[d] for s in shapes) for d in range(len(shapes[0]))],
                [max(s[d] for s in shapes) for d in range(len(shapes[0]))])
        else:
            array.ClearField("ShapeFlexibility")
    return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True), flexibility


def _io(model, cases: list[dict[str, list]], record: dict) -> dict:
    """Each chunk input's and output's dtype (the component's for its own inputs) and shapes per case."""
    from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

    spec = model.get_spec()

    def dtype(feature) -> str:
        if feature.name in record["inputs"]:
            return record["inputs"][feature.name]["dtype"]
        return "int32" if feature.type.multiArrayType.dataType == ArrayFeatureType.INT32 else "float32"

    return {"inputs": {f.name: {"dtype": dtype(f), "enumerated": [c[f.name] for c in cases]}
                       for f in spec.description.input},
            "outputs": {f.name: {"dtype": dtype(f), "enumerated": [c[f.name] for c in cases]}
                        for f in spec.description.output}}


def split_unet(mlpackage: Path, record: dict, *, threshold: int | None = None,
               remove_source: bool = True) -> dict:
    """For an iOS bundle: when the weights of ``mlpackage`` exceed ``threshold`` bytes, write
    ``<stem>_chunk1.mlpackage`` and ``<stem>_chunk2.mlpackage`` beside it and return ``record`` with
    ``chunks`` (file and IO of each, in order); else ``record`` unchanged. ``threshold`` defaults to
    :data:`IOS_WEIGHT_LIMIT` (read at call time)."""
    mlpackage = Path(mlpackage)
    threshold = IOS_WEIGHT_LIMIT if threshold is None else threshold
    if weights_size(mlpackage) <= threshold:
        return record
    chunk1, chunk2, version = _chunk_programs(mlpackage)
    cases = _chunk_shapes(chunk1, record)
    chunks = []
    for i, program in enumerate((chunk1, chunk2), start=1):
        model, flexibility = _describe(_to_model(program, version), cases, record["deployment_target"])
        out = mlpackage.parent / f"{mlpackage.stem}_chunk{i}.mlpackage"
        save(model, out)
        chunks.append({"file": out.name, **_io(model, cases, record), "shape_flexibility": flexibility,
                       "size_bytes": package_size(out), "weight_bytes": weights_size(out)})
    if remove_source:
        shutil.rmtree(mlpackage)
    return {**record, "file": chunks[0]["file"], "chunks": chunks, "split_threshold_bytes": threshold,
            "size_bytes": sum(c["size_bytes"] for c in chunks)}
