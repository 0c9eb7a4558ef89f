"""Random-weight models of the latent diffusion families: configs mirror the CompVis YAMLs, folders load
back with their diffusers pipeline class and sample 2 DDIM steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.models import families as rf


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: intra-op threads only add synchronisation (seconds per step on a loaded CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(tmp_path_factory, builder) -> Path:
    return builder(tmp_path_factory.mktemp("families") / builder.__name__)


def _load(folder: Path, expected_cls: str):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    assert type(pipe).__name__ == expected_cls
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_image(images, n: int, height: int, width: int) -> None:
    images = np.asarray(images)
    assert images.shape == (n, height, width, 3)
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0


def _factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _attn_levels(block_types) -> list[int]:
    return [i for i, t in enumerate(block_types) if "Attn" in t]


def _weights_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 1e6


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def uncond_vq(tmp_path_factory):
    return _build(tmp_path_factory, rf.make_tiny_ldm_uncond_vq)


def test_uncond_vq_mirrors_celebahq_ldm_vq_4(uncond_vq):
    pipe = _load(uncond_vq, "LDMPipeline")
    vq, unet, sched = pipe.vqvae, pipe.unet, pipe.scheduler
    assert type(vq).__name__ == "VQModel" and vq.config.latent_channels == 3 and vq.config.vq_embed_dim == 3
    assert _factor(vq) == 4 and vq.config.scaling_factor == 1.0  # the YAML has no scale_factor
    assert type(unet).__name__ == "UNet2DModel" and unet.config.in_channels == unet.config.out_channels == 3
    c = unet.config.block_out_channels
    assert [x // c[0] for x in c] == [1, 2, 3, 4] and unet.config.layers_per_block == 2
    assert _attn_levels(unet.config.down_block_types) == [1, 2, 3]  # attention_resolutions [8, 4, 2]
    assert (sched.config.beta_start, sched.config.beta_end) == (0.0015, 0.0195)
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.steps_offset == 1
    assert _weights_mb(uncond_vq) < 5
    _check_image(pipe(batch_size=1, num_inference_steps=2, generator=_gen(), output_type="np").images, 1, 32, 32)


def test_builders_are_deterministic(uncond_vq, tmp_path):
    again = rf.make_tiny_ldm_uncond_vq(tmp_path / "again")
    for rel in ("unet/diffusion_pytorch_model.safetensors", "vqvae/diffusion_pytorch_model.safetensors",
                "model_index.json", "unet/config.json"):
        assert (again / rel).read_bytes() == (uncond_vq / rel).read_bytes(), rel
    other = rf.make_tiny_ldm_uncond_vq(tmp_path / "other", seed=1)
    assert (other / "unet/diffusion_pytorch_model.safetensors").read_bytes() != \
        (uncond_vq / "unet/diffusion_pytorch_model.safetensors").read_bytes()


def test_uncond_kl_mirrors_lsun_churches_ldm_kl_8(tmp_path_factory):
    folder = _build(tmp_path_factory, rf.make_tiny_ldm_uncond_kl)
    pipe = _load(folder, "LDMPipeline")
    vae, unet = pipe.vqvae, pipe.unet
    assert type(vae).__name__ == "AutoencoderKL"  # in LDMPipeline's "vqvae" slot
    assert vae.config.latent_channels == 4 and _factor(vae) == 8
    assert vae.config.scaling_factor != 0.18215 and 0.1 < vae.config.scaling_factor < 10  # scale_by_std
    c = unet.config.block_out_channels
    assert [x // c[0] for x in c] == [1, 2, 2, 4, 4]
    assert _attn_levels(unet.config.down_block_types) == [0, 1, 2, 3]  # attention_resolutions [1, 2, 4, 8]
    assert unet.config.resnet_time_scale_shift == "scale_shift"       # use_scale_shift_norm
    assert unet.config.downsample_type == unet.config.upsample_type == "resnet"  # resblock_updown
    assert pipe.scheduler.config.beta_end == 0.0155
    assert _weights_mb(folder) < 5
    out = pipe(batch_size=1, num_inference_steps=2, generator=_gen(), output_type="np").images
    _check_image(out, 1, unet.config.sample_size * 8, unet.config.sample_size * 8)


def test_class_conditional_diffusers_style(tmp_path_factory):
    folder = _build(tmp_path_factory, rf.make_tiny_class_conditional)
    pipe = _load(folder, "LDMPipeline")
    assert pipe.unet.config.num_class_embeds == rf.TINY_NUM_CLASSES == 11  # 10 classes + null class 10
    assert _factor(pipe.vqvae) == 4 and pipe.vqvae.config.latent_channels == 3
    c = pipe.unet.config.block_out_channels
    assert [x // c[0] for x in c] == [1, 2, 3, 5] and _attn_levels(pipe.unet.config.down_block_types) == [1, 2, 3]
    with pytest.raises(ValueError, match="class_labels"):  # LDMPipeline never passes class labels
        pipe(batch_size=1, num_inference_steps=2, output_type="np")
    _check_image(rf.sample_class_conditional(folder, [3, 7], num_inference_steps=2, guidance_scale=3.0), 2, 32, 32)


def test_class_conditional_crossattn_layout(tmp_path_factory):
    from diffusers import DDIMScheduler, UNet2DConditionModel, VQModel

    folder = _build(tmp_path_factory, rf.make_tiny_class_conditional_crossattn)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "LDMClassConditionalPipeline"
    assert {k for k in index if not k.startswith("_")} == {"unet", "vqvae", "class_embedder", "scheduler"}
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vq = VQModel.from_pretrained(folder, subfolder="vqvae")
    DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    embedder, cfg = rf.load_class_embedder(folder)
    assert cfg == {"num_classes": 11, "embed_dim": 32, "unconditional_class": 10}
    assert embedder.weight.shape == (11, 32) and unet.config.cross_attention_dim == 32
    assert unet.config.in_channels == vq.config.latent_channels == 3 and _factor(vq) == 4
    from safetensors.torch import load_file

    assert set(load_file(str(folder / "class_embedder" / rf.CLASS_EMBEDDER_WEIGHTS))) == {"weight"}
    with torch.no_grad():  # context (B, 1, D), as the original ClassEmbedder
        ctx = embedder(torch.tensor([1, 10]))[:, None, :]
        assert unet(torch.zeros(2, 3, 8, 8), 10, encoder_hidden_states=ctx).sample.shape == (2, 3, 8, 8)
    _check_image(rf.sample_class_conditional(folder, [0, 5], num_inference_steps=2, guidance_scale=2.0), 2, 32, 32)


def test_text2img_mirrors_txt2img_1p4b(tmp_path_factory):
    from transformers import BertTokenizer

    folder = _build(tmp_path_factory, rf.make_tiny_ldm_text2img)
    pipe = _load(folder, "LDMTextToImagePipeline")
    assert type(pipe.bert).__name__ == "LDMBertModel" and isinstance(pipe.tokenizer, BertTokenizer)
    tok = BertTokenizer.from_pretrained(folder / "tokenizer")
    assert tok.model_max_length == 77 and tok.pad_token_id == 0 == pipe.bert.config.pad_token_id
    assert (folder / "tokenizer" / "vocab.txt").read_text().split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                                              "[MASK]"]
    ids = tok("A photo of a cat riding zzz", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tok.cls_token_id and tok.unk_token_id not in ids
    assert pipe.vqvae.config.latent_channels == 4 and _factor(pipe.vqvae) == 8
    assert pipe.vqvae.config.scaling_factor == pytest.approx(0.18215)
    assert pipe.unet.config.cross_attention_dim == pipe.bert.config.d_model
    assert _attn_levels(pipe.unet.config.down_block_types) == [0, 1, 2]  # attention_resolutions [4, 2, 1]
    assert _weights_mb(folder) < 5
    out = pipe("a photo of a cat", height=64, width=64, num_inference_steps=2, guidance_scale=3.0,
               generator=_gen(), output_type="np").images
    _check_image(out, 1, 64, 64)


def test_superres_mirrors_bsr_sr(tmp_path_factory):
    folder = _build(tmp_path_factory, rf.make_tiny_superres)
    pipe = _load(folder, "LDMSuperResolutionPipeline")
    assert pipe.unet.config.in_channels == 2 * pipe.vqvae.config.latent_channels == 6
    assert pipe.unet.config.out_channels == 3 and _factor(pipe.vqvae) == 4
    assert _attn_levels(pipe.unet.config.down_block_types) == [3]  # attention_resolutions [16, 8]: ds 8 only
    low = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = pipe(low, num_inference_steps=2, generator=_gen(), output_type="np").images
    _check_image(out, 1, 128, 128)


def test_inpainting_unet_has_9_input_channels(tmp_path_factory):
    folder = _build(tmp_path_factory, rf.make_tiny_inpainting)
    pipe = _load(folder, "StableDiffusionInpaintPipeline")
    assert pipe.unet.config.in_channels == 9 and pipe.unet.config.out_channels == 4
    assert pipe.vae.config.latent_channels == 4 and "_name_or_path" not in json.loads(
        (folder / "model_index.json").read_text())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = Image.fromarray((np.arange(32)[None, :].repeat(32, 0) >= 16).astype(np.uint8) * 255)
    out = pipe("a red cat", image=image, mask_image=mask, height=32, width=32, num_inference_steps=2,
               guidance_scale=2.0, generator=_gen(), output_type="np").images
    _check_image(out, 1, 32, 32)


def test_sd_v_is_sd2_style(tmp_path_factory):
    folder = _build(tmp_path_factory, rf.make_tiny_sd_v)
    pipe = _load(folder, "StableDiffusionPipeline")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.timestep_spacing == "leading"
    tok = pipe.tokenizer  # pads with "!" (id 0 in SD2's real vocab), not with end-of-text
    assert tok.pad_token == "!" and tok.pad_token_id == tok.convert_tokens_to_ids("!") != tok.eos_token_id
    assert pipe.unet.config.use_linear_projection is True
    assert list(pipe.unet.config.attention_head_dim) == [c // 8 for c in pipe.unet.config.block_out_channels]
    assert pipe.text_encoder.config.hidden_act == "gelu"
    out = pipe("a blue square", negative_prompt="red", height=32, width=32, num_inference_steps=2,
               guidance_scale=2.0, generator=_gen(), output_type="np").images
    _check_image(out, 1, 32, 32)


@pytest.mark.slow
def test_celebahq_ldm_vq4_full_architecture(tmp_path):
    folder = rf.make_celebahq_ldm_vq4_architecture(tmp_path / "celebahq")
    pipe = _load(folder, "LDMPipeline")
    unet, vq = pipe.unet, pipe.vqvae
    assert unet.config.block_out_channels == [224, 448, 672, 896] and unet.config.attention_head_dim == 32
    assert _attn_levels(unet.config.down_block_types) == [1, 2, 3] and unet.config.sample_size == 64
    assert vq.config.num_vq_embeddings == 8192 and vq.config.latent_channels == 3 and _factor(vq) == 4
    assert vq.config.block_out_channels == [128, 256, 512] and vq.config.scaling_factor == 1.0
    n_params = sum(p.numel() for p in unet.parameters())
    assert 250e6 < n_params < 300e6, n_params  # LDM-4 CelebA-HQ: 274 M
    _check_image(pipe(batch_size=1, num_inference_steps=2, generator=_gen(), output_type="np").images, 1, 256, 256)
