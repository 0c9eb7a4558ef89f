"""The ``coreml`` target: one ML Program (``.mlpackage``) per component, for Core ML on macOS and iOS.

Per component (:meth:`CoreMLTarget.compile`):

1. convert from torch (:mod:`.convert`: ``torch.export``, enumerated shapes for every declared size and batch 2
   and 1, fp16 or fp32 compute);
2. check the program against torch with the reference evaluator (:mod:`.check`) at batch 2 and every declared
   size: the build stops, naming the component, when an fp16 program falls below 35 dB (the gate Apple's
   converter uses) or an fp32 one leaves the fp32 tolerance;
3. compress the UNet's and the text encoder's weights when asked (``--palettize 6|4|mixed``, ``--weights
   int8``; :mod:`.compress`, :mod:`.mixed`); the autoencoder stays as converted (it is where weight
   compression shows most in images and saves least: it runs once per image), as in the ONNX recipes;
4. for an iOS deployment target, split a UNet whose weights exceed 1 GiB in two chunks (:mod:`.split`).

The bundle's golden vectors: torch's for an uncompressed fp32 bundle; otherwise the bundle's own, recorded by
the ``coreml-reference`` evaluator in the program's arithmetic (``Target.REFERENCE``), with the distance to fp32
torch gated by the compression's quality target (``ldm_runtime.tolerances.QUALITY_TARGETS``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ldm_runtime.errors import UserError
from ldm_runtime.runners import RunnerOptions

from ...precision import DEFAULT_TARGET_PSNR
from ..base import CompileJob, Compiled, Target
from .package import DEPLOYMENT_TARGETS, package_size

PALETTIZE = ("6", "4", "mixed")
WEIGHTS = ("int8",)
COMPRESSED = ("unet", "text_encoder")   # the components whose weights --palettize / --weights compress
MIXED_FEEDS = 16                         # calibration records the mixed search measures on (evenly spaced)


class CoreMLTarget(Target):
    name = "coreml"
    backend = "coreml"
    OPTIONS = ("deployment_target", "palettize", "weights", "target_psnr")
    PRECISIONS = ("fp16", "fp32")
    DEFAULT_PRECISION = "fp16"
    SOURCE = "torch"
    SIZES = "declared"   # enumerated shapes: exactly the declared sizes
    REFERENCE = ("coreml-reference", RunnerOptions())

    def __init__(self, deployment_target: str = "macOS14", palettize: str | None = None, weights: str | None = None,
                 target_psnr: float | None = None):
        if deployment_target not in DEPLOYMENT_TARGETS:
            raise UserError(f"--deployment-target {deployment_target}; expected one of {', '.join(DEPLOYMENT_TARGETS)}")
        if palettize is not None and palettize not in PALETTIZE:
            raise UserError(f"--palettize {palettize}; expected one of {', '.join(PALETTIZE)}")
        if weights is not None and weights not in WEIGHTS:
            raise UserError(f"--weights {weights}; expected one of {', '.join(WEIGHTS)}")
        if palettize is not None and weights is not None:
            raise UserError("--palettize and --weights both compress the weights; give one of them")
        if target_psnr is not None and palettize != "mixed":
            raise UserError("--target-psnr applies to --palettize mixed (or --precision mixed on other targets) only")
        self.deployment_target = deployment_target
        self.palettize, self.weights = palettize, weights
        self.target_psnr = DEFAULT_TARGET_PSNR if target_psnr is None else float(target_psnr)

    def check_precision(self, precision: str) -> None:
        if precision not in self.PRECISIONS:
            raise UserError(f"--target coreml builds --precision fp16 or fp32; got '{precision}': for int8 weights "
                            f"use --weights int8, for smaller weights --palettize 6|4|mixed (activations in int8, "
                            f"W8A8, are not supported: see docs/coreml.md)")

    def compression(self) -> str | None:
        if self.palettize is not None:
            return f"palettize-{self.palettize}"
        return "int8-weights" if self.weights else None

    def needs_calibration(self, precision: str, components: list[str]) -> bool:
        return self.palettize == "mixed"  # the mixed search measures the UNet on calibration inputs

    def own_golden(self, precision: str) -> bool:
        return precision != "fp32" or self.compression() is not None

    def compile(self, job: CompileJob) -> Compiled:
        from .package import quiet

        with quiet():
            return self._compile(job)

    def _compile(self, job: CompileJob) -> Compiled:
        from .check import check_program
        from .convert import convert_component, export_component

        sizes = list(job.sizes)
        out = job.staging / f"{job.component}.mlpackage"
        job.report(f"converting {job.component} to Core ML ({job.precision}, {self.deployment_target}) for "
                   f"{', '.join(f'{w}x{h}' for w, h in sizes)}, batch 2 and 1")
        exported = export_component(job.graph, sizes)
        record = convert_component(job.graph, sizes, precision=job.precision, deployment_target=self.deployment_target,
                                   out=out, exported=exported)
        job.report(f"checking the {job.component} program against torch (coreml-reference evaluator)")
        checks = check_program(job.graph, out, record, sizes, job.precision)
        recipe = None
        if self.compression() and job.component in COMPRESSED:
            recipe = self._compress(job, out)
            record = {**record, "size_bytes": package_size(out)}
        if job.component == "unet" and self.deployment_target.startswith("iOS"):
            from .split import split_unet

            record = split_unet(out, record)
        return Compiled([record["file"]], entry=record, checks=checks, recipe=recipe)

    def _compress(self, job: CompileJob, path: Path) -> dict[str, Any]:
        """Compress ``path`` in place (through a sibling package); returns the compression record."""
        from .compress import int8_weights, palettize
        from .mixed import palettize_mixed

        tmp = path.with_name(f".{path.stem}.compressed.mlpackage")
        method = self.compression()
        job.report(f"compressing {job.component}: {method}")
        if self.weights == "int8":
            rec = int8_weights(path, tmp)
        elif self.palettize == "mixed" and job.component == "unet":
            feeds = _spaced(job.feeds or [], MIXED_FEEDS)
            if not feeds:
                raise UserError("--palettize mixed needs UNet records in the calibration set; it has none")
            rec = palettize_mixed(path, tmp, feeds, target_psnr_db=self.target_psnr)
            job.report(f"  UNet output {rec['psnr_db']:.2f} dB vs the fp16 program (target {self.target_psnr:g} dB), "
                       f"{len(rec['high_blocks'])} of {len(rec['blocks'])} blocks kept at 6 bits")
        else:  # 6 or 4 bits (the text encoder of a mixed build: 6 bits)
            nbits = 6 if self.palettize == "mixed" else int(self.palettize or 6)
            rec = palettize(path, tmp, nbits=nbits, per_grouped_channel=self.deployment_target == "iOS18")
        shutil.rmtree(path)
        tmp.rename(path)
        return {"recipe": method, **rec, "file": path.name}

    def versions(self) -> dict[str, str]:
        from .package import versions

        return versions()

    def device_constraints(self) -> dict[str, Any]:
        return {"coreml": {"deployment_target": self.deployment_target}}


def _spaced(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spaced (calibration records go noisiest step first per trajectory)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]
