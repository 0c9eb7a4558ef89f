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

from .loading import LoadedModel

OPSET = 17
TWO_GB = 2**31


def _torch():
    import torch

    return torch


def _wrappers():
    """Wrapper modules, defined lazily so importing this file does not import torch."""
    torch = _torch()

    class TextEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids, return_dict=False)[0]

    class UNet(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.m(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    class VaeDecoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, latent):
            return self.m.decode(latent, return_dict=False)[0]

    class VaeEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image):
            return self.m.encode(image, return_dict=False)[0].mean

    return TextEncoder, UNet, VaeDecoder, VaeEncoder


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


def component_graphs(model: LoadedModel) -> list[ComponentGraph]:
    TextEncoder, UNet, VaeDecoder, VaeEncoder = _wrappers()
    c, f, L, H = model.latent_channels, model.vae_factor, model.text_max_length, model.text_hidden_size
    vocab = int(model.text_encoder.config.vocab_size)

    def lat(name):
        return {name: {"dtype": "float32", "shape": ["batch", c, "latent_height", "latent_width"]}}

    def img(name):
        return {name: {"dtype": "float32", "shape": ["batch", 3, "height", "width"]}}

    return [
        ComponentGraph(
            "text_encoder", TextEncoder(model.text_encoder),
            {"input_ids": {"dtype": "int64", "shape": ["batch", L]}},
            {"text_embeddings": {"dtype": "float32", "shape": ["batch", L, H]}},
            lambda b, w, h, rng: {"input_ids": rng.integers(0, vocab, (b, L)).astype(np.int64)},
            spatial=False,
        ),
        ComponentGraph(
            "unet", UNet(model.unet),
            {**lat("sample"), "timestep": {"dtype": "float32", "shape": ["batch"]},
             "encoder_hidden_states": {"dtype": "float32", "shape": ["batch", L, H]}},
            lat("model_output"),
            lambda b, w, h, rng: {
                "sample": rng.standard_normal((b, c, h // f, w // f)).astype(np.float32),
                "timestep": rng.integers(1, 1000, (b,)).astype(np.float32),
                "encoder_hidden_states": rng.standard_normal((b, L, H)).astype(np.float32)},
        ),
        ComponentGraph(
            "vae_decoder", VaeDecoder(model.vae), lat("latent"), img("image"),
            lambda b, w, h, rng: {"latent": rng.standard_normal((b, c, h // f, w // f)).astype(np.float32)},
        ),
        ComponentGraph(
            "vae_encoder", VaeEncoder(model.vae), img("image"), lat("latent_mean"),
            lambda b, w, h, rng: {"image": rng.uniform(-1, 1, (b, 3, h, w)).astype(np.float32)},
        ),
    ]


def torch_run(graph: ComponentGraph, feeds: dict[str, np.ndarray]) -> np.ndarray:
    torch = _torch()
    with torch.no_grad():
        out = graph.module(*[torch.from_numpy(feeds[k]) for k in graph.inputs])
    return out.float().numpy()


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
        if proto.ByteSize() < TWO_GB:
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
    from ldm_runtime.runners.onnxruntime import OnnxRuntimeRunner

    tol = component_tolerance(precision, graph.name)
    spec = {"inputs": graph.inputs, "outputs": graph.outputs}
    rows = []
    with OnnxRuntimeRunner(graph.name, onnx_path, spec, providers=["CPUExecutionProvider"]) as runner:
        for w, h in sizes if graph.spatial else sizes[:1]:
            feeds = graph.make_inputs(2, w, h, np.random.default_rng(1))
            got = runner.run(feeds)[next(iter(graph.outputs))]
            ref = torch_run(graph, feeds)
            m = compare(got, ref)
            rows.append({"component": graph.name, "size": f"{w}x{h}" if graph.spatial else "-", **m})
            if not (m["rel_l2"] <= tol.rel_l2 and m["cosine"] >= tol.min_cosine):
                raise ParityError(
                    f"{graph.name} at {w}x{h}: ONNX Runtime differs from torch (max abs {m['max_abs']:.3g}, "
                    f"rel L2 {m['rel_l2']:.3g} > {tol.rel_l2:g} or cosine {m['cosine']:.6f} < "
                    f"{tol.min_cosine}); the export is wrong for this model")
    return rows
