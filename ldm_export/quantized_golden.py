"""Golden vectors of a quantized bundle: its own outputs, recorded at build time.

A quantized bundle does not reproduce torch's fp32 numbers, so its golden vectors are
what *it* computes on the golden inputs with its target's reference backend (ONNX Runtime's CPU
provider for ONNX and TensorRT bundles, the coreml-reference evaluator for Core ML ones): every
component on the inputs recorded from the torch reference, and the full golden
trajectory through the runtime pipeline (same noise, same sampler). ``ldm-run
verify`` then checks that a device reproduces the bundle it was given, against the
precision's tolerance table. Torch's fp32 outputs stay in the file under
``<component>/ref/<output>`` and ``reference/*``, and the distance between the two is
measured here once and recorded in the manifest (``quantization.vs_fp32``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ldm_runtime.bundle import Bundle
from ldm_runtime.metrics import psnr, tensor_psnr
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.request import Request
from ldm_runtime.runners import RunnerOptions
from ldm_runtime.verify import golden_tensors

TRAJECTORY_KEYS = ("trajectory/latents", "trajectory/decoded", "trajectory/image")


def own_golden(staging: Path, manifest: dict, arrays: dict[str, np.ndarray], graphs, backend: str = "onnxruntime",
               options: RunnerOptions = RunnerOptions(provider="cpu")) -> dict:
    """Replace the torch outputs in ``arrays`` by the bundle's own, computed by ``backend`` (in place); return
    the PSNRs vs torch."""
    bundle = Bundle(root=staging, manifest=manifest)
    pipeline = Pipeline(bundle, Components(bundle, backend=backend, options=options))
    vs_fp32: dict = {"components": {}}
    try:
        for g in graphs:
            got = pipeline.run_component(g.name, golden_tensors(arrays, g.name, "in"), where="golden inputs")
            for out in g.outputs:
                ref = arrays.pop(f"{g.name}/out/{out}")
                arrays[f"{g.name}/ref/{out}"] = ref
                arrays[f"{g.name}/out/{out}"] = got[out]
                label = g.name if len(g.outputs) == 1 else f"{g.name}.{out}"
                vs_fp32["components"][label] = round(tensor_psnr(got[out], ref), 2)
        result = pipeline.generate(Request.from_manifest(manifest["golden"], arrays), trace=True)
    finally:
        pipeline.components.release_all()
    for key in TRAJECTORY_KEYS:
        arrays["reference/" + key.split("/")[1]] = arrays[key]
    arrays["trajectory/latents"] = np.stack(result.latents)
    arrays["trajectory/decoded"] = result.decoded
    arrays["trajectory/image"] = result.image
    vs_fp32["image_psnr_db"] = round(psnr(result.image, arrays["reference/image"], 255.0), 2)
    vs_fp32["image_max_abs"] = int(np.max(np.abs(result.image.astype(np.int16) - arrays["reference/image"])))
    return vs_fp32
