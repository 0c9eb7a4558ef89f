"""UNet chunking for iOS, forced on the tiny UNet by a threshold of 0 bytes: two chunks whose chained
evaluation is the unsplit program's, with their IO and enumerated shapes in the record."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ldm_export.export import torch_outputs
from ldm_export.targets.coreml.split import IOS_WEIGHT_LIMIT, split_unet
from ldm_runtime.metrics import compare
from ldm_runtime.runners.coreml_reference import CoreMLReferenceRunner
from tests.conftest import TINY_SIZES


@pytest.fixture(scope="module")
def chunked(tiny_sd_coreml, tmp_path_factory):
    src, record = tiny_sd_coreml["fp16", "unet"]
    folder = tmp_path_factory.mktemp("split")
    shutil.copytree(src, folder / "unet.mlpackage")
    return folder, split_unet(folder / "unet.mlpackage", record, threshold=0)


def test_under_the_limit_nothing_changes(tiny_sd_coreml):
    src, record = tiny_sd_coreml["fp16", "unet"]
    assert split_unet(src, record) is record and IOS_WEIGHT_LIMIT == 2**30 and src.exists()


def test_two_chunks_in_the_record(chunked):
    folder, record = chunked
    assert [c["file"] for c in record["chunks"]] == ["unet_chunk1.mlpackage", "unet_chunk2.mlpackage"]
    assert sorted(p.name for p in folder.iterdir()) == ["unet_chunk1.mlpackage", "unet_chunk2.mlpackage"]
    first, second = record["chunks"]
    assert list(first["inputs"]) == list(record["inputs"])
    crossing = set(first["outputs"]) & set(second["inputs"])
    assert crossing and set(second["inputs"]) <= crossing | set(record["inputs"])
    assert list(second["outputs"]) == ["model_output"]
    n_cases = len(record["inputs"]["sample"]["enumerated"])
    assert all(len(io["enumerated"]) == n_cases for c in record["chunks"] for io in c["inputs"].values())
    assert all(len(v["enumerated"][0]) >= 1 for v in second["inputs"].values())  # nothing of rank 0 crosses
    assert record["size_bytes"] == sum(c["size_bytes"] for c in record["chunks"])


def test_chunk_descriptions_enumerate_the_cases(chunked):
    import coremltools as ct

    folder, record = chunked
    second = record["chunks"][1]
    spec = ct.models.utils.load_spec(str(folder / second["file"]))
    for feature in spec.description.input:
        array = feature.type.multiArrayType
        served = second["inputs"][feature.name]["enumerated"]
        assert list(array.shape) == served[0]
        kind = array.WhichOneof("ShapeFlexibility")
        if kind == "enumeratedShapes":
            assert {tuple(s.shape) for s in array.enumeratedShapes.shapes} == {tuple(s) for s in served}
        elif kind == "shapeRange":
            for d, r in enumerate(array.shapeRange.sizeRanges):
                assert r.lowerBound == min(s[d] for s in served) and r.upperBound == max(s[d] for s in served)


def test_chained_chunks_compute_the_unet(chunked, tiny_sd_coreml, tiny_sd_graphs):
    folder, record = chunked
    whole_path, whole_record = tiny_sd_coreml["fp16", "unet"]
    graph = tiny_sd_graphs["unet"]
    with CoreMLReferenceRunner("unet", folder / record["file"], record) as chunks, \
            CoreMLReferenceRunner("unet", whole_path, whole_record) as whole:
        for b, size in [(2, TINY_SIZES[0]), (1, TINY_SIZES[1])]:
            feeds = graph.make_inputs(b, *size, np.random.default_rng(b))
            got, want = chunks.run(feeds)["model_output"], whole.run(feeds)["model_output"]
            assert compare(got, want)["rel_l2"] < 2e-3   # the crossing values round to fp16 again in chunk 2
            assert compare(got, torch_outputs(graph, feeds)["model_output"])["cosine"] > 0.9999
