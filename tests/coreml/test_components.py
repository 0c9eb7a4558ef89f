"""The tiny SD model's text encoder, UNet and decoder converted to ML Programs and evaluated by the
coreml-reference runner against torch: fp32 programs within the fp32 tolerance table (1e-4 relative L2) at
both sizes and both batches; fp16 programs at 35 dB PSNR or more against fp32 torch."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_export.export import torch_outputs
from ldm_runtime.errors import UserError
from ldm_runtime.metrics import compare, tensor_psnr
from ldm_runtime.runners.coreml_reference import CoreMLReferenceRunner
from ldm_runtime.tolerances import component_tolerance, quality_target
from ldm_runtime.runners import RunnerOptions
from tests.conftest import TINY_SIZES

from .conftest import COMPONENTS

CASES = [(b, size) for size in TINY_SIZES for b in (2, 1)]


def _runner(tiny_sd_coreml, precision, name, **options):
    path, record = tiny_sd_coreml[precision, name]
    return CoreMLReferenceRunner(name, path, record, RunnerOptions(**options))


@pytest.mark.parametrize("name", COMPONENTS)
def test_fp32_programs_match_torch(tiny_sd_coreml, tiny_sd_graphs, name):
    graph, tol = tiny_sd_graphs[name], component_tolerance("fp32", name)
    with _runner(tiny_sd_coreml, "fp32", name) as runner:
        for b, (w, h) in CASES:
            feeds = graph.make_inputs(b, w, h, np.random.default_rng(b * w))
            got = runner.run(feeds)
            for key, ref in torch_outputs(graph, feeds).items():
                m = compare(got[key], ref)
                assert got[key].shape == ref.shape
                assert m["rel_l2"] <= tol.rel_l2, (name, b, w, h, m)


@pytest.mark.parametrize("name", COMPONENTS)
def test_fp16_programs_psnr(tiny_sd_coreml, tiny_sd_graphs, name):
    """fp16 arithmetic at every op boundary, against fp32 torch: the 35 dB floor of fp16 bundles."""
    graph, floor = tiny_sd_graphs[name], quality_target("fp16").component_psnr_db
    with _runner(tiny_sd_coreml, "fp16", name) as runner:
        assert runner._programs[0].precision == "fp16"
        for b, (w, h) in CASES[:1] + CASES[-1:]:
            feeds = graph.make_inputs(b, w, h, np.random.default_rng(7))
            got = runner.run(feeds)
            for key, ref in torch_outputs(graph, feeds).items():
                assert tensor_psnr(got[key], ref) >= floor, (name, b, w, h, tensor_psnr(got[key], ref))


def test_fp16_rounding_is_what_separates_the_arithmetics(tiny_sd_coreml, tiny_sd_graphs):
    """The same fp16 UNet in fp32 arithmetic keeps only the fp16 weights' error: closer to torch than fp16
    arithmetic, and the two differ (the evaluator does round at op boundaries)."""
    graph = tiny_sd_graphs["unet"]
    feeds = graph.make_inputs(2, *TINY_SIZES[0], np.random.default_rng(3))
    ref = torch_outputs(graph, feeds)["model_output"]
    with _runner(tiny_sd_coreml, "fp16", "unet") as fp16, \
            _runner(tiny_sd_coreml, "fp16", "unet", arithmetic="fp32") as fp32:
        a, b = fp16.run(feeds)["model_output"], fp32.run(feeds)["model_output"]
    assert not np.array_equal(a, b)
    assert tensor_psnr(b, ref) > tensor_psnr(a, ref) + 3


def test_record(tiny_sd_coreml):
    path, record = tiny_sd_coreml["fp16", "unet"]
    assert record["file"] == path.name and record["format"] == "mlprogram"
    assert record["precision"] == "fp16" and record["deployment_target"] == "macOS14"
    assert set(record["versions"]) == {"coremltools", "torch"}
    assert record["size_bytes"] == sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    served = record["inputs"]["sample"]["enumerated"]
    assert [s[0] for s in served] == [2, 1, 2, 1] and {tuple(s[2:]) for s in served} == {(16, 16), (24, 32)}
    assert record["outputs"]["model_output"]["enumerated"] == served
    assert record["shape_flexibility"] == {"sample": "enumerated", "timestep": "range",
                                           "encoder_hidden_states": "range"}
    _, dec = tiny_sd_coreml["fp32", "vae_decoder"]
    assert dec["outputs"]["image"]["enumerated"][2] == [2, 3, 48, 64]


def test_package_io_names_and_shapes(tiny_sd_coreml):
    """The saved model's description: the graph's IO names, the enumerated shapes, float32 / int32 IO."""
    import coremltools as ct

    path, record = tiny_sd_coreml["fp16", "unet"]
    spec = ct.models.utils.load_spec(str(path))
    inputs = {f.name: f.type.multiArrayType for f in spec.description.input}
    assert list(inputs) == list(record["inputs"]) and [f.name for f in spec.description.output] == ["model_output"]
    shapes = [list(s.shape) for s in inputs["sample"].enumeratedShapes.shapes]
    assert sorted(shapes) == sorted(record["inputs"]["sample"]["enumerated"])
    text_path, _ = tiny_sd_coreml["fp32", "text_encoder"]
    ids = ct.models.utils.load_spec(str(text_path)).description.input[0].type.multiArrayType
    assert ids.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32


def test_shape_outside_the_enumeration_refused(tiny_sd_coreml, tiny_sd_graphs):
    with _runner(tiny_sd_coreml, "fp32", "vae_decoder") as runner:
        feeds = tiny_sd_graphs["vae_decoder"].make_inputs(1, 40, 40, np.random.default_rng(0))
        with pytest.raises(UserError, match=r"shape \(1, 4, 20, 20\) is not one the Core ML program serves"):
            runner.run(feeds)


def test_token_ids_out_of_int32_refused(tiny_sd_coreml):
    with _runner(tiny_sd_coreml, "fp32", "text_encoder") as runner:
        ids = np.full((1, 16), 2**40, np.int64)
        with pytest.raises(UserError, match="do not fit the program's int32 input"):
            runner.run({"input_ids": ids})
