"""Random-weight models of the latent diffusion paper's model families, saved as diffusers folders.

Each builder ``make_X(folder, seed=0) -> Path`` writes a pipeline folder with
``pipe.save_pretrained(folder, safe_serialization=True)``. The configurations
mirror the original CompVis ``latent-diffusion`` / ``stable-diffusion`` YAML
configs named in each docstring -- channel multipliers, attention levels,
latent channels and downsampling factor, VQ vs KL first stage, conditioning
kind, beta schedule -- at tiny widths (a few hundred KB to a few MB, seconds to
build). Builders are deterministic in ``seed`` and leave the global torch RNG
untouched. ``make_celebahq_ldm_vq4_architecture`` is the full-size LDM-4
CelebA-HQ model (random weights, ~330 M parameters) for slow tests.

Translating the original configs:

* ``attention_resolutions`` lists downsampling factors ``ds`` of the latent:
  level ``i`` of ``channel_mult`` sits at ``ds = 2**i`` and gets attention
  blocks iff ``ds`` is listed. The middle block always has attention.
* The original "linear" beta schedule is linear in sqrt(beta): diffusers'
  ``scaled_linear`` with ``beta_start = linear_start``, ``beta_end = linear_end``.
  The CompVis DDIM sampler uses timesteps ``range(0, T, T // n) + 1`` and
  ``alpha_prev = alphas_cumprod[0]`` at the last step: ``steps_offset=1``,
  ``timestep_spacing="leading"``, ``set_alpha_to_one=False``, no clipping.
* ``scale_factor`` (``LatentDiffusion``, default 1.0) is the latent scale:
  diffusers keeps it as the first stage's ``scaling_factor`` config entry.
  ``VQModel`` defaults it to 0.18215 (an SD value that none of the VQ LDMs
  used), so the VQ builders here set 1.0 explicitly.
* UNet2DModel's ``attention_head_dim`` is a per-head width (heads =
  channels // dim; ``None`` = one head), UNet2DConditionModel's
  ``attention_head_dim`` is (for historical reasons) the number of heads.

Class-conditional models (cin256-v2), two layouts:

* ``make_tiny_class_conditional``: diffusers style -- a ``UNet2DModel`` with
  ``num_class_embeds`` (class embedding added to the time embedding), saved as
  an ``LDMPipeline`` folder. ``LDMPipeline`` loads it but cannot sample from it
  (it never passes ``class_labels``; the UNet raises): use
  :func:`sample_class_conditional`.
* ``make_tiny_class_conditional_crossattn``: as the original model -- a
  ``ClassEmbedder`` (``nn.Embedding(n_classes, context_dim)``) turns the label
  into a cross-attention context of shape ``(B, 1, context_dim)`` for a
  ``UNet2DConditionModel``. No diffusers pipeline exists for this, so the folder
  is our own **LDMClassConditionalPipeline** layout::

      model_index.json   {"_class_name": "LDMClassConditionalPipeline",
                          "unet": ["diffusers", "UNet2DConditionModel"],
                          "vqvae": ["diffusers", "VQModel"],
                          "class_embedder": ["torch.nn", "Embedding"],
                          "scheduler": ["diffusers", "DDIMScheduler"]}
      unet/ vqvae/ scheduler/   ordinary diffusers component folders
      class_embedder/config.json        {"num_classes": N, "embed_dim": D, "unconditional_class": N - 1}
      class_embedder/model.safetensors  {"weight": float32 [N, D]}

  ``num_classes`` counts the embedding rows *including* the null class, as the
  original ``n_classes: 1001`` does (ImageNet's 1000 classes + class 1000, the
  label the original sampling notebook feeds for the unconditional branch of
  classifier-free guidance). Both layouts keep that convention (the
  ``num_class_embeds`` of the diffusers-style UNet also counts the null class).
"""

from __future__ import annotations

import json
import string
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.models.sd import TINY_SCHEDULER, make_tiny_sd, write_clip_tokenizer

LDM_CLASS_CONDITIONAL_PIPELINE = "LDMClassConditionalPipeline"
CLASS_EMBEDDER_WEIGHTS = "model.safetensors"

TINY_NUM_CLASSES = 11       # 10 classes + the null class 10 (cin256: 1000 + 1)
TINY_CLASS_EMBED_DIM = 32   # cin256: 512


def ldm_scheduler(linear_start: float, linear_end: float, **overrides) -> dict:
    """DDIM config of an original ``LatentDiffusion`` YAML (``linear_start``/``linear_end``, T = 1000)."""
    return {**TINY_SCHEDULER, "beta_start": linear_start, "beta_end": linear_end, **overrides}


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _f4_vq(*, full: bool = False) -> dict:
    """The ``vq-f4`` first stage (celebahq / cin256 / bsr_sr): ch_mult [1,2,4], z_channels = embed_dim = 3."""
    if full:  # ch 128, num_res_blocks 2, n_embed 8192, resolution 256
        return dict(in_channels=3, out_channels=3, latent_channels=3, vq_embed_dim=3, num_vq_embeddings=8192,
                    block_out_channels=(128, 256, 512), down_block_types=("DownEncoderBlock2D",) * 3,
                    up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2, norm_num_groups=32,
                    sample_size=256, scaling_factor=1.0)
    return dict(in_channels=3, out_channels=3, latent_channels=3, vq_embed_dim=3, num_vq_embeddings=64,
                block_out_channels=(8, 16, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=8,
                sample_size=32, scaling_factor=1.0)


def _vq_model(**config):
    """A VQModel whose codebook spans the latents, as a trained one does.

    The default init (uniform ±1/n_e) puts every code near the origin, where random-weight latents
    (std ~10) sit at almost equal distance from several codes: a 1e-7 difference between two
    correct implementations of the nearest-code search then flips codes. Trained codebooks do not
    look like that, so the test models should not either.
    """
    import torch
    from diffusers import VQModel

    vq = VQModel(**config).eval()
    with torch.no_grad():
        vq.quantize.embedding.weight.normal_(0.0, 1.0)
    return vq


def _f8_kl(sample_size: int) -> dict:
    """The ``kl-f8`` first stage (lsun_churches / txt2img-1p4B / SD): ch_mult [1,2,4,4], z_channels 4."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 32, 32),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=1, norm_num_groups=8, sample_size=sample_size)


def _save(pipe, folder: Path) -> Path:
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# --------------------------------------------------------------------------- unconditional


def make_tiny_ldm_uncond_vq(folder: Path, seed: int = 0) -> Path:
    """Unconditional LDM-4 like ``configs/latent-diffusion/celebahq-ldm-vq-4.yaml``: ``LDMPipeline``.

    VQ f4 first stage with 3 latent channels (``scaling_factor`` 1.0: the YAML
    sets no ``scale_factor``); UNet channel_mult [1,2,3,4] (x8 instead of
    x224), attention_resolutions [8,4,2] = levels 1..3, fixed head width,
    2 res blocks per level; image 32 = latent 8 (original 256 = 64).
    """
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel

    folder = Path(folder)
    with _seeded(seed):
        vqvae = _vq_model(**_f4_vq())
        unet = UNet2DModel(
            sample_size=8, in_channels=3, out_channels=3, layers_per_block=2,
            block_out_channels=(8, 16, 24, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=4,  # original: num_head_channels 32
        ).eval()
    return _save(LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler(**ldm_scheduler(0.0015, 0.0195))),
                 folder)


def make_tiny_ldm_uncond_kl(folder: Path, seed: int = 0) -> Path:
    """Unconditional LDM-8 like ``configs/latent-diffusion/lsun_churches-ldm-kl-8.yaml``.

    An ``AutoencoderKL`` (f8, 4 latent channels) sits in ``LDMPipeline``'s
    ``vqvae`` slot (typed ``VQModel`` there, but the pipeline only calls
    ``decode(z).sample`` and reads ``config.scaling_factor``, which both have).
    UNet channel_mult [1,2,2,4,4], attention_resolutions [1,2,4,8] = levels 0..3,
    ``use_scale_shift_norm`` -> ``resnet_time_scale_shift="scale_shift"``,
    ``resblock_updown`` -> resnet down/upsamplers. The original uses 8 heads at
    every level; UNet2DModel only takes one head width, so it is fixed here.
    ``scale_by_std: True``: the original sets ``scale_factor = 1 / std(z)`` of the
    first training batch's latents; done here on a seeded random batch.
    Image 128 = latent 16 (original 256 = 32).
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, LDMPipeline, UNet2DModel

    folder = Path(folder)
    with _seeded(seed):
        vae = AutoencoderKL(**_f8_kl(128)).eval()
        unet = UNet2DModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(8, 16, 16, 32, 32),
            down_block_types=("AttnDownBlock2D",) * 4 + ("ResnetDownsampleBlock2D",),
            up_block_types=("ResnetUpsampleBlock2D",) + ("AttnUpBlock2D",) * 4,
            downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift",
            attention_head_dim=8, norm_num_groups=4,
        ).eval()
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            batch = torch.rand(4, 3, 128, 128, generator=g) * 2 - 1
            z = vae.encode(batch).latent_dist.sample(generator=g)
        vae.register_to_config(scaling_factor=float(1.0 / z.flatten().std()))
    return _save(LDMPipeline(vqvae=vae, unet=unet, scheduler=DDIMScheduler(**ldm_scheduler(0.0015, 0.0155))),
                 folder)


# --------------------------------------------------------------------------- class-conditional


def _cin_vq_and_sched(seed: int):
    from diffusers import DDIMScheduler

    with _seeded(seed):
        vqvae = _vq_model(**_f4_vq())
    return vqvae, DDIMScheduler(**ldm_scheduler(0.0015, 0.0195))


# cin256-v2: channel_mult [1,2,3,5] (x8 instead of x192), attention_resolutions [8,4,2] = levels 1..3, 1 head
_CIN_CHANNELS = (8, 16, 24, 40)


def make_tiny_class_conditional(folder: Path, seed: int = 0) -> Path:
    """Class-conditional LDM-4 like ``cin256-v2.yaml``, diffusers style: ``LDMPipeline`` folder.

    The UNet (``UNet2DModel``) adds ``nn.Embedding(num_class_embeds, time_dim)``
    of the label to the time embedding (``num_class_embeds`` = 11: 10 classes +
    null class 10). ``LDMPipeline`` loads the folder but cannot call the UNet
    without ``class_labels``: sample with :func:`sample_class_conditional`.
    """
    from diffusers import LDMPipeline, UNet2DModel

    folder = Path(folder)
    vqvae, scheduler = _cin_vq_and_sched(seed)
    with _seeded(seed + 1):
        unet = UNet2DModel(
            sample_size=8, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=_CIN_CHANNELS,
            down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * 3,
            up_block_types=("AttnUpBlock2D",) * 3 + ("UpBlock2D",),
            attention_head_dim=None,  # one head per block, as num_heads: 1
            norm_num_groups=4, num_class_embeds=TINY_NUM_CLASSES,
        ).eval()
    return _save(LDMPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler), folder)


def make_tiny_class_conditional_crossattn(folder: Path, seed: int = 0) -> Path:
    """Class-conditional LDM-4 like ``cin256-v2.yaml``, original layout: ``LDMClassConditionalPipeline``.

    ``conditioning_key: crossattn``: ``ClassEmbedder`` = ``nn.Embedding(11, 32)``
    (original 1001 x 512) gives the context ``(B, 1, 32)`` of a
    ``UNet2DConditionModel`` with spatial transformers (depth 1, one head,
    conv proj_in/out) at levels 1..3. See the module docstring for the layout.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    folder = Path(folder)
    vqvae, scheduler = _cin_vq_and_sched(seed)
    with _seeded(seed + 1):
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=_CIN_CHANNELS,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
            up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
            cross_attention_dim=TINY_CLASS_EMBED_DIM, attention_head_dim=1,  # = number of heads here
            norm_num_groups=4,
        ).eval()
        embedder = torch.nn.Embedding(TINY_NUM_CLASSES, TINY_CLASS_EMBED_DIM)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vqvae.save_pretrained(folder / "vqvae", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    emb_dir = folder / "class_embedder"
    emb_dir.mkdir(exist_ok=True)
    save_file({"weight": embedder.weight.detach().contiguous()}, str(emb_dir / CLASS_EMBEDDER_WEIGHTS))
    (emb_dir / "config.json").write_text(json.dumps({
        "num_classes": TINY_NUM_CLASSES, "embed_dim": TINY_CLASS_EMBED_DIM,
        "unconditional_class": TINY_NUM_CLASSES - 1,
    }, indent=2) + "\n")
    from diffusers import __version__ as diffusers_version

    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": LDM_CLASS_CONDITIONAL_PIPELINE, "_diffusers_version": diffusers_version,
        "class_embedder": ["torch.nn", "Embedding"], "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vqvae": ["diffusers", "VQModel"],
    }, indent=2) + "\n")
    return folder


def load_class_embedder(folder: Path):
    """The ``class_embedder`` of an ``LDMClassConditionalPipeline`` folder: ``(nn.Embedding, config dict)``."""
    import torch
    from safetensors.torch import load_file

    emb_dir = Path(folder) / "class_embedder"
    config = json.loads((emb_dir / "config.json").read_text())
    embedder = torch.nn.Embedding(config["num_classes"], config["embed_dim"])
    embedder.load_state_dict(load_file(str(emb_dir / CLASS_EMBEDDER_WEIGHTS)))
    return embedder.eval(), config


def sample_class_conditional(folder: Path, class_labels: list[int], *, num_inference_steps: int = 2,
                             guidance_scale: float = 1.0, seed: int = 0, eta: float = 0.0):
    """Reference DDIM sampler for both class-conditional layouts; returns ``(B, H, W, 3)`` floats in [0, 1].

    Classifier-free guidance as the original: ``e = e(null) + s * (e(c) - e(null))``
    with the null class ``num_classes - 1``, only when ``guidance_scale != 1``.
    Decoding: ``latents / scaling_factor`` -> VQ decode (quantizing) -> ``(x + 1) / 2`` clamped.
    """
    import numpy as np
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel, VQModel

    folder = Path(folder)
    kind = json.loads((folder / "model_index.json").read_text())["_class_name"]
    vqvae = VQModel.from_pretrained(folder, subfolder="vqvae").eval()
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    if kind == LDM_CLASS_CONDITIONAL_PIPELINE:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
        embedder, cfg = load_class_embedder(folder)
        null_class = cfg["unconditional_class"]

        def eps(x, t, labels):
            return unet(x, t, encoder_hidden_states=embedder(labels)[:, None, :]).sample
    else:
        unet = UNet2DModel.from_pretrained(folder, subfolder="unet").eval()
        null_class = unet.config.num_class_embeds - 1

        def eps(x, t, labels):
            return unet(x, t, class_labels=labels).sample

    labels = torch.tensor(class_labels, dtype=torch.long)
    size = unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((len(labels), unet.config.in_channels, size, size), generator=g)
    latents = latents * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_inference_steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(latents, t)
            if guidance_scale == 1.0:
                e = eps(x, t, labels)
            else:
                both = torch.cat([torch.full_like(labels, null_class), labels])
                e_null, e_cond = eps(torch.cat([x, x]), t, both).chunk(2)
                e = e_null + guidance_scale * (e_cond - e_null)
            latents = scheduler.step(e, t, latents, eta=eta, generator=g).prev_sample
        image = vqvae.decode(latents / vqvae.config.scaling_factor).sample
    return np.ascontiguousarray((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy())


# --------------------------------------------------------------------------- text-to-image (LDM-KL-8-G, BERT)

_BERT_WORDS = (
    "a an the of on in at to with and or for from by is are this that it its as into over under near "
    "photo photograph painting drawing sketch picture portrait image illustration render watercolor oil "
    "cat dog horse bird fish cow sheep lion tiger bear fox wolf rabbit mouse elephant giraffe zebra monkey "
    "squirrel owl duck frog snake turtle dragon unicorn robot astronaut person man woman child people king "
    "queen knight wizard red blue green yellow orange purple pink black white gray brown gold silver "
    "small large big tiny huge tall short old young new beautiful ugly happy sad dark bright colorful "
    "circle square triangle star heart cube sphere left right above below top bottom front back middle "
    "city street house castle tower bridge road car train boat ship plane bicycle mountain hill river lake "
    "sea ocean beach forest tree flower grass garden field desert snow rain cloud sky sun moon night day "
    "morning evening sunset sunrise space planet galaxy fire water ice stone wood metal glass "
    "eating riding sitting standing running flying swimming holding wearing playing reading burger pizza "
    "apple banana cake coffee tea hat shirt dress shoes glasses book table chair window door lamp"
).split()
_BERT_SUFFIXES = ("##s", "##es", "##ed", "##ing", "##er", "##est", "##ly", "##y", "##n")


def bert_wordpiece_vocab() -> list[str]:
    """A small uncased WordPiece vocab: the BERT specials, characters, ``##`` pieces and a word list."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + pieces + list(_BERT_SUFFIXES) + _BERT_WORDS
    return list(dict.fromkeys(tokens))


def write_bert_tokenizer(folder: Path, model_max_length: int = 77):
    """Write ``vocab.txt`` and save a ``BertTokenizer`` (uncased) to ``folder``; returns the tokenizer."""
    from transformers import BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(bert_wordpiece_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True, model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)  # transformers 5 writes tokenizer.json + tokenizer_config.json
    return tokenizer


def make_tiny_ldm_text2img(folder: Path, seed: int = 0) -> Path:
    """Text-to-image LDM-KL-8 like ``txt2img-1p4B-eval.yaml``: ``LDMTextToImagePipeline``.

    KL f8 first stage (4 latent channels, ``scaling_factor`` 0.18215 as the YAML's
    ``scale_factor``); LDMBert text encoder (original 32 layers x 1280, here 2 x 32)
    with an uncased WordPiece ``BertTokenizer`` (max length 77, ``[PAD]`` = 0);
    UNet channel_mult [1,2,4,4] (x8 instead of x320), attention_resolutions
    [4,2,1] = levels 0..2, a fixed head count (4 instead of 8) at every level,
    context_dim = the BERT width.
    Image 64 = latent 8 (original 256 = 32).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, LDMTextToImagePipeline, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    folder = Path(folder)
    tokenizer = write_bert_tokenizer(folder / "tokenizer", model_max_length=77)
    with _seeded(seed):
        vae = AutoencoderKL(**_f8_kl(64), scaling_factor=0.18215).eval()
        bert = LDMBertModel(LDMBertConfig(
            vocab_size=len(tokenizer), max_position_embeddings=77, encoder_layers=2, encoder_ffn_dim=64,
            encoder_attention_heads=2, head_dim=16, d_model=32, pad_token_id=tokenizer.pad_token_id,
        )).eval()
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 32, 32),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=32, attention_head_dim=4,  # = number of heads here (original num_heads: 8)
            norm_num_groups=4,
        ).eval()
    pipe = LDMTextToImagePipeline(vqvae=vae, bert=bert, tokenizer=tokenizer, unet=unet,
                                  scheduler=DDIMScheduler(**ldm_scheduler(0.00085, 0.012)))
    _save(pipe, folder)
    # transformers 5 saves only tokenizer.json: keep the plain vocab.txt beside it for torch-free readers
    (folder / "tokenizer" / "vocab.txt").write_text("\n".join(bert_wordpiece_vocab()) + "\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- super-resolution


def make_tiny_superres(folder: Path, seed: int = 0) -> Path:
    """4x super-resolution LDM like ``models/ldm/bsr_sr/config.yaml``: ``LDMSuperResolutionPipeline``.

    ``concat_mode``: the UNet input is [3 latent channels, the low-res RGB image]
    (``in_channels`` 6; the pipeline draws ``in_channels // 2`` latent channels
    at the low-res image's size), VQ f4 decodes to 4x the input size.
    channel_mult [1,2,2,4] (x8 instead of x160), attention_resolutions [16, 8]:
    only ds 8 (level 3) exists.
    """
    from diffusers import DDIMScheduler, LDMSuperResolutionPipeline, UNet2DModel

    folder = Path(folder)
    with _seeded(seed):
        vqvae = _vq_model(**_f4_vq())
        unet = UNet2DModel(
            sample_size=32, in_channels=6, out_channels=3, layers_per_block=2, block_out_channels=(8, 16, 16, 32),
            down_block_types=("DownBlock2D",) * 3 + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * 3,
            attention_head_dim=8, norm_num_groups=4,  # original: num_head_channels 32
        ).eval()
    return _save(LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet,
                                            scheduler=DDIMScheduler(**ldm_scheduler(0.0015, 0.0155))), folder)


# --------------------------------------------------------------------------- Stable Diffusion variants


def _rederive_sd(folder: Path, seed: int, pipeline_cls, *, unet: dict | None = None, text: dict | None = None):
    """Reload a ``make_tiny_sd`` folder as ``pipeline_cls`` with the UNet / text encoder rebuilt from
    modified configs (fresh seeded weights), and save it in place."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    replaced = {}
    with _seeded(seed + 1):
        if unet is not None:
            config = dict(UNet2DConditionModel.load_config(folder / "unet"), **unet)
            replaced["unet"] = UNet2DConditionModel.from_config(config).eval()
        if text is not None:
            config = CLIPTextConfig.from_pretrained(folder / "text_encoder")
            for key, value in text.items():
                setattr(config, key, value)
            replaced["text_encoder"] = CLIPTextModel(config).eval()
    pipe = pipeline_cls.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False, **replaced)
    _save(pipe, folder)
    index_file = folder / "model_index.json"  # drop the reload's "_name_or_path" (this folder's path)
    index = json.loads(index_file.read_text())
    index.pop("_name_or_path", None)
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder


def make_tiny_inpainting(folder: Path, seed: int = 0) -> Path:
    """SD-style inpainting like ``v1-inpainting-inference.yaml``: ``StableDiffusionInpaintPipeline``.

    ``make_tiny_sd``'s model with a 9-channel UNet input (``conditioning_key:
    hybrid``: 4 noisy latents + 1 mask + 4 masked-image latents), CLIP text
    encoder / tokenizer, KL VAE with ``scaling_factor`` 0.18215.
    """
    from diffusers import StableDiffusionInpaintPipeline

    folder = Path(folder)
    make_tiny_sd(folder, seed=seed)
    return _rederive_sd(folder, seed, StableDiffusionInpaintPipeline, unet={"in_channels": 9})


def make_tiny_sd_v(folder: Path, seed: int = 0) -> Path:
    """Stable Diffusion 2.x style (``v2-inference-v.yaml``): ``StableDiffusionPipeline`` with v-prediction.

    ``parameterization: "v"`` -> ``prediction_type="v_prediction"`` ("leading"
    DDIM spacing); ``use_linear_in_transformer`` -> ``use_linear_projection``;
    ``num_head_channels: 64`` -> per-block head counts (channels / 8 here, as
    SD2's [5, 10, 20, 20] = channels / 64); OpenCLIP's plain GELU; tokenizer pad
    token "!" (SD2's tokenizer pads with "!", id 0, instead of end-of-text).
    """
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    make_tiny_sd(folder, seed=seed, scheduler={**TINY_SCHEDULER, "prediction_type": "v_prediction",
                                               "timestep_spacing": "leading"})
    write_clip_tokenizer(folder / "tokenizer", model_max_length=16, pad_token="!")
    return _rederive_sd(folder, seed, StableDiffusionPipeline,
                        unet={"use_linear_projection": True, "attention_head_dim": [4, 8]},
                        text={"hidden_act": "gelu"})


# --------------------------------------------------------------------------- full size


def make_celebahq_ldm_vq4_architecture(folder: Path, seed: int = 0) -> Path:
    """The full LDM-4 CelebA-HQ architecture of ``celebahq-ldm-vq-4.yaml`` with random weights (~1.3 GB).

    UNet: model_channels 224, channel_mult [1,2,3,4], attention_resolutions
    [8,4,2], num_res_blocks 2, num_head_channels 32, latent 64x64x3; VQ f4:
    ch 128, ch_mult [1,2,4], n_embed 8192, embed_dim 3, image 256.
    """
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel

    folder = Path(folder)
    with _seeded(seed):
        vqvae = _vq_model(**_f4_vq(full=True))
        unet = UNet2DModel(
            sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
            block_out_channels=(224, 448, 672, 896),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=32, norm_num_groups=32,
        ).eval()
    return _save(LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler(**ldm_scheduler(0.0015, 0.0195))),
                 folder)
