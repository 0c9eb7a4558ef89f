"""Weight compression of the tiny SD UNet and decoder (coremltools.optimize.coreml), checked with the
reference evaluator against fp32 torch. PSNR floors (peak = max |torch|), measured on these random-weight
models with margin (UNet / decoder): 6-bit k-means 42 / 41 dB measured, floor 36; 4-bit 30 / 29 dB, floor 25;
int8 weights 53 / 53 dB, floor 45. The UNet is palettized to 6 bits; the decoder (a third of the UNet's ops,
so a third of the compression time) takes every method."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ldm_export.export import torch_outputs
from ldm_export.targets.coreml.compress import int8_weights, palettize
from ldm_runtime.errors import UserError
from ldm_runtime.metrics import tensor_psnr
from ldm_runtime.runners.coreml_reference import CoreMLReferenceRunner
from ldm_runtime.runners.coreml_reference.program import load_program
from tests.conftest import TINY_SIZES

FLOORS = {"palettize-6": 36.0, "palettize-4": 25.0, "int8": 45.0}


def _psnr(path, record, graph, name="unet"):
    feeds = graph.make_inputs(2, *TINY_SIZES[0], np.random.default_rng(11))
    with CoreMLReferenceRunner(name, path, record) as runner:
        got = runner.run(feeds)
    ref = torch_outputs(graph, feeds)
    return min(tensor_psnr(got[k], ref[k]) for k in ref)


@pytest.fixture(scope="module")
def compressed(tiny_sd_coreml, tmp_path_factory):
    unet, _ = tiny_sd_coreml["fp16", "unet"]
    decoder, _ = tiny_sd_coreml["fp16", "vae_decoder"]
    root = tmp_path_factory.mktemp("compressed")
    return {("unet", "palettize-6"): palettize(unet, root / "unet_p6.mlpackage", nbits=6),
            ("vae_decoder", "palettize-6"): palettize(decoder, root / "vae_decoder_p6.mlpackage", nbits=6),
            ("vae_decoder", "palettize-4"): palettize(decoder, root / "vae_decoder_p4.mlpackage", nbits=4),
            ("vae_decoder", "int8"): int8_weights(decoder, root / "vae_decoder_i8.mlpackage")}, root


FILES = {"palettize-6": "p6", "palettize-4": "p4", "int8": "i8"}
OPS = {"palettize-6": "constexpr_lut_to_dense", "palettize-4": "constexpr_lut_to_dense",
       "int8": "constexpr_affine_dequantize"}


@pytest.mark.parametrize("name, kind", [("unet", "palettize-6"), ("vae_decoder", "palettize-6"),
                                        ("vae_decoder", "palettize-4"), ("vae_decoder", "int8")])
def test_compressed(compressed, tiny_sd_coreml, tiny_sd_graphs, name, kind):
    records, root = compressed
    record = records[name, kind]
    path = root / f"{name}_{FILES[kind]}.mlpackage"
    _, fp16 = tiny_sd_coreml["fp16", name]
    assert record["size_bytes"]["compressed"] < record["size_bytes"]["source"] == fp16["size_bytes"]
    assert OPS[kind] in load_program(path, name).op_types()
    assert _psnr(path, fp16, tiny_sd_graphs[name], name) >= FLOORS[kind]


def test_fewer_bits_smaller(compressed):
    records, _ = compressed
    sizes = {k: r["weight_bytes"]["compressed"] for (name, k), r in records.items() if name == "vae_decoder"}
    assert sizes["palettize-4"] < sizes["palettize-6"] < sizes["int8"]


def test_default_threshold_keeps_small_constants(compressed):
    """The timestep-frequency table (16 values) and the small biases stay uncompressed (default threshold)."""
    records, root = compressed
    program = load_program(root / "unet_p6.mlpackage", "unet")
    palettized = [op for op in program.ops if op.type == "constexpr_lut_to_dense"]
    sizes = [int(np.prod(program.constants[op.inputs["shape"]])) for op in palettized]
    assert min(sizes) > 2048


def test_grouped_palettes_need_ios18(tiny_sd_coreml, tmp_path):
    src, _ = tiny_sd_coreml["fp16", "vae_decoder"]
    with pytest.raises(UserError, match="grouped palettes need an iOS 18 program"):
        palettize(src, tmp_path / "g.mlpackage", nbits=4, per_grouped_channel=True)


@pytest.mark.slow
def test_ios18_decoder_grouped_palettes_and_blockwise_int8(tiny_sd_graphs, tiny_sd_exports, tmp_path):
    from ldm_export.targets.coreml.convert import convert_component

    graph = tiny_sd_graphs["vae_decoder"]
    src = tmp_path / "dec18.mlpackage"
    record = convert_component(graph, list(TINY_SIZES), precision="fp16", deployment_target="iOS18", out=src,
                               exported=tiny_sd_exports["vae_decoder"])
    assert record["shape_flexibility"] == {"latent": "enumerated"}
    grouped = palettize(src, tmp_path / "g4.mlpackage", nbits=4, per_grouped_channel=True, group_size=8)
    assert grouped["deployment"] == "iOS18" and grouped["size_bytes"]["compressed"] < grouped["size_bytes"]["source"]
    int8 = int8_weights(src, tmp_path / "i8.mlpackage")
    assert "constexpr_blockwise_shift_scale" in load_program(tmp_path / "i8.mlpackage", "dec").op_types()
    assert _psnr(tmp_path / "g4.mlpackage", record, graph, "vae_decoder") >= FLOORS["palettize-4"]
    assert _psnr(tmp_path / "i8.mlpackage", record, graph, "vae_decoder") >= FLOORS["int8"]
    assert int8["size_bytes"]["compressed"] < int8["size_bytes"]["source"]


def test_packages_are_replaced_atomically(tiny_sd_coreml, tmp_path):
    """A package is written beside its destination and renamed into place: a failure while writing leaves the
    old package as it was and no temporary folder behind."""
    from ldm_export.targets.coreml.package import atomic_package

    src, _ = tiny_sd_coreml["fp16", "vae_decoder"]
    out = tmp_path / "dec.mlpackage"
    shutil.copytree(src, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(RuntimeError), atomic_package(out) as tmp:
        shutil.copytree(src, tmp)
        (tmp / "Manifest.json").write_text("half written")
        raise RuntimeError("interrupted")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "Manifest.json").read_bytes() == (src / "Manifest.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dec.mlpackage"]
    with atomic_package(out) as tmp:
        shutil.copytree(src, tmp)
        (tmp / "marker").write_text("new")
    assert (out / "marker").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["dec.mlpackage"]
