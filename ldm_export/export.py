"""Export each component through a small wrapper with fixed IO names to ONNX.

One wrapper per component, one shared helper that traces, normalises the file
(single external-data file above 2 GB), runs ``onnx.checker`` and then ONNX
Runtime against torch on the same inputs.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldm_runtime.errors import ParityError
from ldm_runtime.metrics import compare
from ldm_runtime.tolerances import component_tolerance

from .model import LoadedModel
from .onnx_io import TWO_GB, serialized_size

OPSET = 17


def _torch():
    import torch

    return torch


def _wrap(forward, module, n_outputs: int = 1):
    """A torch.nn.Module whose forward is ``forward(module, *inputs)``."""
    torch = _torch()

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, *inputs):
            return forward(self.m, *inputs)

    # eval(): torch.onnx.export restores the wrapper's training flag afterwards, recursively; a new module
    # is in training mode, which would switch dropout on in the wrapped model after the export.
    return Wrapper().eval()


def _unet_forward(extra: tuple[str, ...]):
    def forward(m, sample, timestep, *rest):
        return m(sample, timestep, **dict(zip(extra, rest)), return_dict=False)[0]

    return forward


def _kl_encode(m, image):
    dist = m.encode(image, return_dict=False)[0]
    return dist.mean, dist.std


@dataclass
class ComponentGraph:
    """What is exported for one component: wrapper, IO specs for the manifest, and input makers."""

    name: str
    module: object
    inputs: dict[str, dict]     # name → {"dtype", "shape"} with symbolic dims as strings
    outputs: dict[str, dict]
    make_inputs: object         # (batch, width, height, rng) → dict[str, np.ndarray]
    spatial: bool = True        # False: the shapes do not depend on the image size

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {i: d for i, d in enumerate(s["shape"]) if isinstance(d, str)}
                for n, s in {**self.inputs, **self.outputs}.items()}


def _f32(*shape) -> dict:
    return {"dtype": "float32", "shape": list(shape)}


def component_graphs(model: LoadedModel) -> list[ComponentGraph]:
    """The components of ``model`` with fixed IO names, in the order they are exported."""
    graphs = [g for g in (_text_encoder(model), _class_embedder(model)) if g is not None]
    graphs.append(_unet(model))
    graphs.append(_decoder(model))
    encoder = _encoder(model)
    return graphs + ([encoder] if encoder is not None else [])


def _text_encoder(model: LoadedModel) -> ComponentGraph | None:
    if model.text is None:
        return None
    L, H, vocab = model.text.max_length, model.text.hidden_size, model.text.vocab_size
    return ComponentGraph(
        "text_encoder", _wrap(lambda m, ids: m(ids)[0], model.modules.text_encoder),
        {"input_ids": {"dtype": "int64", "shape": ["batch", L]}}, {"text_embeddings": _f32("batch", L, H)},
        lambda b, w, h, rng: {"input_ids": rng.integers(0, vocab, (b, L)).astype(np.int64)}, spatial=False)


def _class_embedder(model: LoadedModel) -> ComponentGraph | None:
    c = model.classes
    if c is None or c.via != "context":
        return None
    return ComponentGraph(
        "class_embedder", _wrap(lambda m, labels: m(labels)[:, None, :], model.modules.class_embedder),
        {"class_labels": {"dtype": "int64", "shape": ["batch"]}}, {"context": _f32("batch", 1, c.embed_dim)},
        lambda b, w, h, rng: {"class_labels": rng.integers(0, c.num_classes, (b,)).astype(np.int64)}, spatial=False)


def _unet_conditioning(model: LoadedModel) -> dict[str, dict]:
    """The UNet's conditioning input: text embeddings, a class context, or class labels (or none)."""
    if model.text is not None:
        return {"encoder_hidden_states": _f32("batch", model.text.max_length, model.text.hidden_size)}
    c = model.classes
    if c is not None and c.via == "context":
        return {"encoder_hidden_states": _f32("batch", 1, c.embed_dim)}
    if c is not None:
        return {"class_labels": {"dtype": "int64", "shape": ["batch"]}}
    return {}


def _unet(model: LoadedModel) -> ComponentGraph:
    """Latents (+ concatenated channels), timestep, and the conditioning input it takes."""
    extra_in = _unet_conditioning(model)
    unet_c, f = model.unet_in_channels, model.latent.downsample_factor
    num_classes = model.classes.num_classes if model.classes is not None else 0

    def unet_inputs(b, w, h, rng):
        feeds = {"sample": rng.standard_normal((b, unet_c, h // f, w // f)).astype(np.float32),
                 "timestep": rng.integers(1, 1000, (b,)).astype(np.float32)}
        for name, spec in extra_in.items():
            if spec["dtype"] == "int64":
                feeds[name] = rng.integers(0, num_classes, (b,)).astype(np.int64)
            else:
                feeds[name] = rng.standard_normal([b] + spec["shape"][1:]).astype(np.float32)
        return feeds

    return ComponentGraph(
        "unet", _wrap(_unet_forward(tuple(extra_in)), model.modules.unet),
        {"sample": _f32("batch", unet_c, "latent_height", "latent_width"), "timestep": _f32("batch"), **extra_in},
        {"model_output": _latent(model)}, unet_inputs)


def _latent(model: LoadedModel) -> dict:
    return _f32("batch", model.latent.channels, "latent_height", "latent_width")


def _decoder(model: LoadedModel) -> ComponentGraph:
    """VQ models quantize inside the graph (nearest-codebook lookup), as the paper describes."""
    m = model.modules
    decoder = m.decoder if m.vae is None else m.vae
    dec_forward = (lambda m, z: m(z)) if m.vae is None else (lambda m, z: m.decode(z, return_dict=False)[0])
    c, f = model.latent.channels, model.latent.downsample_factor
    return ComponentGraph(
        "vae_decoder", _wrap(dec_forward, decoder), {"latent": _latent(model)},
        {"image": _f32("batch", 3, "height", "width")},
        lambda b, w, h, rng: {"latent": rng.standard_normal((b, c, h // f, w // f)).astype(np.float32)})


def _encoder(model: LoadedModel) -> ComponentGraph | None:
    m = model.modules
    enc_outputs = {"latent_mean": _latent(model)}
    if m.vae is None:
        enc_forward, encoder = (lambda m, x: m(x)), m.encoder
    elif model.autoencoder_kind == "vq":
        enc_forward, encoder = (lambda m, x: m.encode(x, return_dict=False)[0]), m.vae
    else:  # KL: the mean, and the std for samplers that draw from the posterior (inpainting)
        enc_forward, encoder = _kl_encode, m.vae
        enc_outputs["latent_std"] = _latent(model)
    if encoder is None:
        return None
    return ComponentGraph(
        "vae_encoder", _wrap(enc_forward, encoder), {"image": _f32("batch", 3, "height", "width")}, enc_outputs,
        lambda b, w, h, rng: {"image": rng.uniform(-1, 1, (b, 3, h, w)).astype(np.float32)})


def torch_outputs(graph: ComponentGraph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The wrapper's outputs in torch, by output name."""
    torch = _torch()
    with torch.no_grad():
        out = graph.module(*[torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in graph.inputs])
    out = out if isinstance(out, tuple) else (out,)
    return {name: t.float().numpy() for name, t in zip(graph.outputs, out)}


def export_onnx(graph: ComponentGraph, out_dir: Path, trace_size: tuple[int, int]) -> list[str]:
    """Trace ``graph`` to ``out_dir/<name>.onnx``; returns the relative file names written."""
    import onnx

    torch = _torch()
    feeds = graph.make_inputs(2, *trace_size, np.random.default_rng(0))
    target = out_dir / f"{graph.name}.onnx"
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings on shape asserts are expected
            torch.onnx.export(
                graph.module, tuple(torch.from_numpy(feeds[k]) for k in graph.inputs), str(raw),
                input_names=list(graph.inputs), output_names=list(graph.outputs),
                dynamic_axes=graph.dynamic_axes(), opset_version=OPSET, do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(raw), load_external_data=True)
        if serialized_size(proto) < TWO_GB:
            onnx.save_model(proto, str(target))
            files = [target.name]
        else:
            data = f"{graph.name}.onnx.data"
            onnx.save_model(proto, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
            files = [target.name, data]
    onnx.checker.check_model(str(target), full_check=True)
    return files


def check_against_torch(graph: ComponentGraph, onnx_path: Path, sizes: list[tuple[int, int]],
                        precision: str = "fp32") -> list[dict]:
    """Run the exported graph in ONNX Runtime and torch on the same inputs; raise on a mismatch.

    Checks batch 2 at every size in ``sizes``, so the dynamic axes are exercised too.
    """
    from ldm_runtime.runners import RunnerOptions
    from ldm_runtime.runners.onnxruntime import OnnxRuntimeRunner

    tol = component_tolerance(precision, graph.name)
    spec = {"inputs": graph.inputs, "outputs": graph.outputs}
    rows = []
    with OnnxRuntimeRunner(graph.name, onnx_path, spec, RunnerOptions(provider="cpu")) as runner:
        for w, h in sizes if graph.spatial else sizes[:1]:
            feeds = graph.make_inputs(2, w, h, np.random.default_rng(1))
            got = runner.run(feeds)
            for name, ref in torch_outputs(graph, feeds).items():
                m = compare(got[name], ref)
                rows.append({"component": graph.name, "output": name,
                             "size": f"{w}x{h}" if graph.spatial else "-", **m})
                if not (m["rel_l2"] <= tol.rel_l2 and m["cosine"] >= tol.min_cosine):
                    raise ParityError(
                        f"{graph.name} at {w}x{h}: ONNX Runtime differs from torch in '{name}' (max abs "
                        f"{m['max_abs']:.3g}, rel L2 {m['rel_l2']:.3g} > {tol.rel_l2:g} or cosine "
                        f"{m['cosine']:.6f} < {tol.min_cosine}); the export is wrong for this model")
    return rows
