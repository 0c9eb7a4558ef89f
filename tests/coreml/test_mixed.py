"""Mixed bit widths (4-bit k-means with the most sensitive blocks at 6 bits) on the tiny SD decoder, the
sensitivity measured with the reference evaluator. On these weights all-4-bit gives 31 dB and keeping half of
the weights at 6 bits at most 36 dB (measured), so 33 dB is reachable and 60 dB is not."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_export.targets.coreml.mixed import block_of, palettize_mixed
from ldm_runtime.errors import UserError
from ldm_runtime.runners.coreml_reference.program import load_program


@pytest.fixture(scope="module")
def decoder(tiny_sd_coreml, tiny_sd_graphs):
    path, _ = tiny_sd_coreml["fp16", "vae_decoder"]
    rng = np.random.default_rng(3)
    return path, [tiny_sd_graphs["vae_decoder"].make_inputs(1, 32, 32, rng) for _ in range(3)]


def test_block_names():
    assert block_of("p_m_down_blocks_0_resnets_1_conv1_weight_to_fp16") == "down_blocks_0_resnets_1"
    assert block_of("p_m_mid_block_attentions_0_proj_in_weight") == "mid_block_attentions_0"
    assert block_of("p_m_conv_in_weight_to_fp16") == "conv_in"
    assert block_of("p_m_decoder_up_blocks_1_upsamplers_0_conv_weight") == "decoder_up_blocks_1_upsamplers_0"


def test_meets_a_reachable_target(decoder, tmp_path):
    path, feeds = decoder
    r = palettize_mixed(path, tmp_path / "mixed.mlpackage", feeds, target_psnr_db=33.0)
    assert r["met"] and r["psnr_db"] >= 33.0
    assert r["high_blocks"] and r["search"][0]["high_blocks"] == 0 and r["search"][0]["psnr_db"] < 33.0
    # the wide blocks are the most sensitive ones, and the file holds both bit widths
    ranks = {b["block"]: b["sensitivity_rank"] for b in r["blocks"]}
    assert sorted(ranks[b] for b in r["high_blocks"]) == list(range(1, len(r["high_blocks"]) + 1))
    program = load_program(tmp_path / "mixed.mlpackage", "dec")
    luts = [program.constants[op.inputs["lut"]].size for op in program.ops if op.type == "constexpr_lut_to_dense"]
    assert set(luts) == {16, 64}
    assert r["size_bytes"]["compressed"] < r["size_bytes"]["source"]


@pytest.mark.slow
def test_says_how_close_it_got_and_what_it_kept_wider(decoder, tmp_path):
    path, feeds = decoder
    with pytest.raises(UserError, match=r"cannot reach 60 dB .* best \d+\.\d\d dB with \d of \d blocks kept wider "
                                        r"\(decoder_\w+") as e:
        palettize_mixed(path, tmp_path / "mixed.mlpackage", feeds, target_psnr_db=60.0)
    assert "\n" not in str(e.value) and not (tmp_path / "mixed.mlpackage").exists()
