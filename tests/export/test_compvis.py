"""Original CompVis/Stability single-file checkpoints: round trips through the original layout, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.models.sd import TINY_SCHEDULER, vocab_size
from ldm_export.sources.compvis import convert_checkpoint
from tests.models.compvis_writer import save_original_checkpoint
from ldm_runtime.errors import UserError

SD2_SCHEDULER = dict(TINY_SCHEDULER, prediction_type="v_prediction")

# Names and shapes the original UNetModel / Encoder / Decoder give the tiny config below (model_channels 32,
# channel_mult [1, 2], one resblock per level, attention at level 0; VAE ch 32, ch_mult [1, 2]). They pin the
# layout independently of the key table: skip-connection widths and level order differ between blocks.
ORIGINAL_SHAPES = {
    "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
    "model.diffusion_model.time_embed.0.weight": (128, 32),
    "model.diffusion_model.time_embed.2.weight": (128, 128),
    "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": (32, 32, 3, 3),
    "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight": (32, 128),
    "model.diffusion_model.input_blocks.2.0.op.weight": (32, 32, 3, 3),
    "model.diffusion_model.input_blocks.3.0.in_layers.2.weight": (64, 32, 3, 3),
    "model.diffusion_model.input_blocks.3.0.skip_connection.weight": (64, 32, 1, 1),
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (64, 32),
    "model.diffusion_model.middle_block.2.out_layers.3.weight": (64, 64, 3, 3),
    "model.diffusion_model.output_blocks.0.0.in_layers.0.weight": (128,),
    "model.diffusion_model.output_blocks.0.0.skip_connection.weight": (64, 128, 1, 1),
    "model.diffusion_model.output_blocks.1.0.in_layers.0.weight": (96,),
    "model.diffusion_model.output_blocks.1.1.conv.weight": (64, 64, 3, 3),
    "model.diffusion_model.output_blocks.2.0.in_layers.0.weight": (96,),
    "model.diffusion_model.output_blocks.2.0.out_layers.3.weight": (32, 32, 3, 3),
    "model.diffusion_model.output_blocks.3.0.in_layers.0.weight": (64,),
    "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.ff.net.0.proj.weight": (256, 32),
    "model.diffusion_model.out.2.weight": (4, 32, 3, 3),
    "first_stage_model.encoder.conv_in.weight": (32, 3, 3, 3),
    "first_stage_model.encoder.down.0.downsample.conv.weight": (32, 32, 3, 3),
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (64, 32, 1, 1),
    "first_stage_model.encoder.mid.attn_1.q.weight": (64, 64, 1, 1),
    "first_stage_model.encoder.conv_out.weight": (8, 64, 3, 3),
    "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
    "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
    "first_stage_model.decoder.conv_in.weight": (64, 4, 3, 3),
    "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (32, 64, 1, 1),
    "first_stage_model.decoder.up.0.block.1.conv1.weight": (32, 32, 3, 3),
    "first_stage_model.decoder.up.1.block.1.conv2.weight": (64, 64, 3, 3),
    "first_stage_model.decoder.up.1.upsample.conv.weight": (64, 64, 3, 3),
    "first_stage_model.decoder.norm_out.weight": (32,),
    "alphas_cumprod": (1000,),
}


def _tiny(flavour: str, vocab: int):
    """Tiny modules the original format can express: GroupNorm32 (channels multiple of 32), channel_mult[0] == 1.

    sd1: conv proj_in/out, one head count everywhere, OpenAI CLIP (quick_gelu) text encoder.
    sd2: linear proj_in/out, one head width (8) everywhere, OpenCLIP (gelu) text encoder.
    Every parameter is random (GroupNorm/LayerNorm too), so any swapped or misplaced tensor shows.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd2 = flavour == "sd2"
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(4, 8) if sd2 else 4, use_linear_projection=sd2,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=16, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=1,
        hidden_act="gelu" if sd2 else "quick_gelu",
    ))
    with torch.no_grad():
        for m in (unet, vae, text):
            for p in m.parameters():
                p.normal_(0.0, 0.1)
    return unet.eval(), vae.eval(), text.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models: thread hand-offs cost more than the work (seconds per UNet call on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models(tiny_tokenizer_dir):
    vocab = vocab_size(tiny_tokenizer_dir)
    return {f: _tiny(f, vocab) for f in ("sd1", "sd2")}


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory) -> tuple[Path, Path]:
    """An SD-1.x-style original checkpoint (.safetensors) + YAML, read-only for the tests."""
    d = tmp_path_factory.mktemp("orig")
    save_original_checkpoint(*models["sd1"], TINY_SCHEDULER, d / "m.safetensors", d / "m.yaml")
    return d / "m.safetensors", d / "m.yaml"


def _outputs(unet, vae, text, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 12, generator=g), torch.randn(2, 16, 32, generator=g)
    img, z = torch.randn(1, 3, 16, 24, generator=g), torch.randn(1, 4, 8, 12, generator=g)
    ids = torch.randint(0, vocab, (2, 16), generator=g)
    with torch.no_grad():
        t = text(ids)
        return {
            "unet": unet(x, torch.tensor([1, 999]), ctx).sample,
            "vae_encode": vae.encode(img).latent_dist.parameters,
            "vae_decode": vae.decode(z).sample,
            "text_hidden": t.last_hidden_state, "text_pooled": t.pooler_output,
        }


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("flavour", ["sd1", "sd2"])
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_round_trip_through_the_original_layout(models, flavour, suffix, tmp_path, tiny_tokenizer_dir):
    unet, vae, text = models[flavour]
    sched = SD2_SCHEDULER if flavour == "sd2" else TINY_SCHEDULER
    ckpt, cfg = tmp_path / f"model{suffix}", tmp_path / "model.yaml"
    save_original_checkpoint(unet, vae, text, sched, ckpt, cfg)

    # the file really is in the original layout (names and shapes of real SD checkpoints)
    if suffix == ".ckpt":
        sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    else:
        from safetensors.torch import load_file
        sd = load_file(str(ckpt))
    for k, shape in ORIGINAL_SHAPES.items():
        assert tuple(sd[k].shape) == shape, k
    proj_in = sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"]
    assert tuple(proj_in.shape) == ((32, 32) if flavour == "sd2" else (32, 32, 1, 1))
    if flavour == "sd1":
        assert "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight" in sd
    else:
        assert sd["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"].shape == (96, 32)
    y = yaml.safe_load(cfg.read_text())["model"]
    unet_params = y["params"]["unet_config"]["params"]
    assert unet_params["attention_resolutions"] == [1] and unet_params["channel_mult"] == [1, 2]
    assert unet_params["use_linear_in_transformer"] is (flavour == "sd2")
    assert (unet_params.get("num_head_channels"), unet_params.get("num_heads")) == ((8, None) if flavour == "sd2"
                                                                                   else (None, 4))

    out = convert_checkpoint(ckpt, cfg, tokenizer_dir=tiny_tokenizer_dir)
    assert out["family"] == "text-to-image"
    for name, before in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        after = out[name]
        assert not after.training and type(after) is type(before)
        a, b = before.state_dict(), after.state_dict()
        assert a.keys() == b.keys(), name
        for k in a:
            assert b[k].dtype == torch.float32 and torch.equal(a[k], b[k]), f"{name}: {k}"
    ref = _outputs(unet, vae, text, vocab_size(tiny_tokenizer_dir))
    got = _outputs(out["unet"], out["vae"], out["text_encoder"], vocab_size(tiny_tokenizer_dir))
    for k in ref:
        assert (ref[k] - got[k]).abs().max().item() <= 1e-6, k
    assert out["vae"].config.scaling_factor == pytest.approx(0.18215)
    assert out["scheduler_config"] == {
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "prediction_type": "v_prediction" if flavour == "sd2" else "epsilon", "steps_offset": 1,
        "set_alpha_to_one": False, "clip_sample": False, "timestep_spacing": "leading",
    }
    from diffusers import DDIMScheduler
    DDIMScheduler.from_config(out["scheduler_config"])  # a valid scheduler config


def test_openclip_penultimate_layer_drops_the_last_block(models, tmp_path):
    unet, vae, text = models["sd2"]
    save_original_checkpoint(unet, vae, text, SD2_SCHEDULER, tmp_path / "m.safetensors", tmp_path / "m.yaml")
    y = yaml.safe_load((tmp_path / "m.yaml").read_text())
    y["model"]["params"]["cond_stage_config"]["params"]["layer"] = "penultimate"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(y))
    te = convert_checkpoint(tmp_path / "m.safetensors", tmp_path / "m.yaml")["text_encoder"]
    assert te.config.num_hidden_layers == text.config.num_hidden_layers - 1
    ids = torch.randint(0, text.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # FrozenOpenCLIPEmbedder(layer="penultimate"): ln_final(output of all blocks but the last)
        final_ln = getattr(text, "text_model", text).final_layer_norm  # transformers 4 nests it in .text_model
        want = final_ln(text(ids, output_hidden_states=True).hidden_states[-2])
        assert (te(ids).last_hidden_state - want).abs().max().item() <= 1e-6


def test_checkpoint_without_text_encoder_weights(models, tmp_path):
    unet, vae, _ = models["sd1"]
    save_original_checkpoint(unet, vae, None, TINY_SCHEDULER, tmp_path / "m.ckpt", tmp_path / "m.yaml")
    out = convert_checkpoint(tmp_path / "m.ckpt", tmp_path / "m.yaml")
    assert out["text_encoder"] is None and out["unet"] is not None


# ------------------------------------------------------------------ bad input


def test_missing_files(saved, tmp_path):
    ckpt, cfg = saved
    with pytest.raises(UserError, match="checkpoint .*nope.ckpt does not exist") as e:
        convert_checkpoint(tmp_path / "nope.ckpt", cfg)
    _one_line_error(e)
    with pytest.raises(UserError, match="config .*nope.yaml does not exist"):
        convert_checkpoint(ckpt, tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="tokenizer folder .* does not exist"):
        convert_checkpoint(ckpt, cfg, tokenizer_dir=tmp_path / "no_tokenizer")


def test_unsupported_extension_and_unreadable_files(saved, tmp_path):
    _, cfg = saved
    (tmp_path / "m.bin2").write_bytes(b"x")
    with pytest.raises(UserError, match=r"unsupported checkpoint extension \.bin2; supported: \.safetensors"):
        convert_checkpoint(tmp_path / "m.bin2", cfg)
    (tmp_path / "junk.ckpt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint") as e:
        convert_checkpoint(tmp_path / "junk.ckpt", cfg)
    _one_line_error(e)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match="not a readable .safetensors file"):
        convert_checkpoint(tmp_path / "junk.safetensors", cfg)


class _Payload:
    """Unpickling this object runs code: it creates the marker file named at construction."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_ckpt_with_pickled_code_is_refused_not_executed(saved, tmp_path):
    from safetensors.torch import load_file

    ckpt, cfg = saved
    marker = tmp_path / "executed.marker"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": load_file(str(ckpt)), "callbacks": _Payload(marker)}, evil)
    with pytest.raises(UserError, match="holds pickled code .*and loading it would run arbitrary code, so "
                                        "ldm-export refuses it; if you trust the file, convert it to .safetensors"
                       ) as e:
        convert_checkpoint(evil, cfg)
    _one_line_error(e)
    assert not marker.exists()
    torch.load(evil, map_location="cpu", weights_only=False)  # proof that the payload was live
    assert marker.exists()


@pytest.mark.parametrize("section", ["unet_config", "first_stage_config", "cond_stage_config"])
def test_unknown_target_is_named_with_the_supported_ones(saved, tmp_path, section):
    ckpt, cfg = saved
    y = yaml.safe_load(cfg.read_text())
    y["model"]["params"][section]["target"] = "ldm.modules.somewhere.Mystery"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(y))
    with pytest.raises(UserError, match=rf"unsupported {section} target ldm.modules.somewhere.Mystery; "
                                        r"supported: ldm\.") as e:
        convert_checkpoint(ckpt, tmp_path / "m.yaml")
    _one_line_error(e)


@pytest.mark.parametrize("text,match", [
    ("foo: 1\nbar: [1, 2]\n", "not a LatentDiffusion config: expected a top-level 'model:'.*found top-level keys: foo, bar"),
    ("- a\n- b\n", "not a LatentDiffusion config: .*found a list"),
    ("model: [unclosed\n", "not a LatentDiffusion config: it is not valid YAML"),
    ("model:\n  target: ldm.models.diffusion.ddpm.DDPM\n", "unsupported model target ldm.models.diffusion.ddpm.DDPM; "
                                                           "supported: ldm.models.diffusion.ddpm.LatentDiffusion"),
])
def test_not_a_latent_diffusion_config(saved, tmp_path, text, match):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(UserError, match=match) as e:
        convert_checkpoint(saved[0], tmp_path / "bad.yaml")
    _one_line_error(e)


def test_unsupported_config_values_are_named(saved, tmp_path):
    ckpt, cfg = saved
    y = yaml.safe_load(cfg.read_text())
    y["model"]["params"]["conditioning_key"] = "hybrid"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(y))
    with pytest.raises(UserError, match="conditioning_key is 'hybrid': only 'crossattn'"):
        convert_checkpoint(ckpt, tmp_path / "m.yaml")


def test_keys_that_do_not_match_the_config(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt, cfg = saved
    sd = load_file(str(ckpt))
    for k in ("model.diffusion_model.out.2.weight", "first_stage_model.encoder.conv_in.bias",
              "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        del sd[k]
    for i in range(5):
        sd[f"model.diffusion_model.extra.{i}.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(UserError) as e:
        convert_checkpoint(tmp_path / "m.safetensors", cfg)
    msg = _one_line_error(e)
    assert "3 missing keys (model.diffusion_model.out.2.weight, first_stage_model.encoder.conv_in.bias, " in msg
    assert "5 unexpected keys (model.diffusion_model.extra.0.weight, " in msg and "…" in msg


def test_shapes_that_do_not_match_the_config(saved, tmp_path):
    ckpt, cfg = saved
    y = yaml.safe_load(cfg.read_text())
    y["model"]["params"]["unet_config"]["params"]["context_dim"] = 64
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(y))
    with pytest.raises(UserError, match=r"size mismatches \(model\.diffusion_model\..*attn2\.to_k\.weight: "
                                        r"checkpoint \[32, 32\] vs config \[32, 64\]") as e:
        convert_checkpoint(ckpt, tmp_path / "m.yaml")
    _one_line_error(e)


def test_save_refuses_what_the_original_format_cannot_express(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel(  # make_tiny_sd's UNet: GroupNorm with 8 groups (the original has 32)
        sample_size=8, layers_per_block=1, block_out_channels=(32, 64), cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(block_out_channels=(32,), layers_per_block=1)
    with pytest.raises(UserError, match="cannot save in the original CompVis format: UNet norm_num_groups=8"):
        save_original_checkpoint(unet, vae, None, TINY_SCHEDULER, tmp_path / "m.ckpt", tmp_path / "m.yaml")
    assert not (tmp_path / "m.ckpt").exists()


def test_checkpoint_builds_a_bundle_that_verifies(saved, tmp_path, tiny_tokenizer_dir):
    """`ldm-export build model.safetensors --config model.yaml --tokenizer DIR` end to end."""
    import subprocess
    import sys

    from ldm_runtime.bundle import open_bundle
    from ldm_runtime.pipeline import Components, Pipeline
    from ldm_runtime.verify import format_report, verify_bundle

    ckpt, yaml_path = saved
    out = tmp_path / "bundle"
    r = subprocess.run([sys.executable, "-m", "ldm_export.cli", "build", str(ckpt), "--config", str(yaml_path),
                        "--tokenizer", str(tiny_tokenizer_dir), "--out", str(out), "--golden-steps", "3"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    b = open_bundle(out)
    assert b.manifest["source"]["format"] == "compvis"
    report = verify_bundle(Pipeline(b, Components(b)))
    assert report.ok, format_report(report)


def test_checkpoint_without_config_is_refused_in_one_line(saved, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ldm_export.cli", "build", str(saved[0]), "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: m.safetensors is a single-file checkpoint: pass its original YAML with --config")


@pytest.mark.parametrize("flavour", ["sd1", "sd2"])
def test_the_converter_agrees_with_diffusers_own_single_file_conversion(models, flavour, tmp_path):
    """An independent oracle for the key table: diffusers' single-file loader functions
    (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint`` /
    ``convert_open_clip_checkpoint``) map the same original checkpoint with their own tables. Every tensor
    of our conversion must equal theirs, so a consistent swap of two same-shaped tensors in our writer and
    converter (which the round trip cannot see) fails here."""
    from diffusers.loaders import single_file_utils as sfu
    from safetensors.torch import load_file

    unet, vae, text = models[flavour]
    sched = SD2_SCHEDULER if flavour == "sd2" else TINY_SCHEDULER
    ckpt, cfg = tmp_path / "m.safetensors", tmp_path / "m.yaml"
    save_original_checkpoint(unet, vae, text, sched, ckpt, cfg)
    ours = convert_checkpoint(ckpt, cfg)
    sd = load_file(str(ckpt))
    theirs = {"unet": sfu.convert_ldm_unet_checkpoint(sd, dict(ours["unet"].config)),
              "vae": sfu.convert_ldm_vae_checkpoint(sd, dict(ours["vae"].config))}
    if flavour == "sd1":
        theirs["text_encoder"] = sfu.convert_ldm_clip_checkpoint(sd)
    else:
        import copy  # it loads into the model it is given: a copy, so ours stays ours

        theirs["text_encoder"] = sfu.convert_open_clip_checkpoint(copy.deepcopy(ours["text_encoder"]), sd)
    def names(state: dict) -> dict:  # transformers 5's CLIPTextModel has no "text_model." level in its names
        return {k.removeprefix("text_model."): v for k, v in state.items()}

    for name, reference in theirs.items():
        state = names(ours[name].state_dict())
        if not isinstance(reference, dict):  # convert_open_clip_checkpoint returns the loaded model
            reference = reference.state_dict()
        reference = names(reference)
        shared = [k for k in reference if not k.endswith("position_ids")]
        assert shared and set(shared) <= set(state), (name, sorted(set(shared) - set(state))[:5])
        for k in shared:
            assert torch.equal(state[k], reference[k].to(state[k].dtype)), f"{name}.{k} differs from diffusers'"
