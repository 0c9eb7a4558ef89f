"""One calibration task: a trajectory of the torch reference, with the inputs it records.

A worker (this process, or a Ray actor: :mod:`ldm_export.sweep`) sets the job up once, loading the model and
checking it is the one the driver hashed; each task then runs one trajectory and returns its records as
arrays named ``<order>/<component>/<input>``, read back in that order by :func:`records_of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ldm_runtime.errors import UserError


@dataclass(frozen=True)
class CalibrationJob:
    model: Path
    config: Path | None
    tokenizer: Path | None
    factories: tuple[tuple[str, str], ...]
    sha256: str          # the model the driver loaded: the worker's must be the same
    loras: tuple[tuple[Path, float], ...] = ()   # LoRA files fused into it, as on the driver (build --lora)

    def setup(self):
        from ..export import component_graphs
        from ..loading import load_model

        model = load_model(self.model, self.config, self.tokenizer, dict(self.factories))
        if model.source.sha256 != self.sha256:
            raise UserError(f"the worker's copy of {self.model} is another model (sha256 {model.source.sha256[:12]}… "
                            f"vs {self.sha256[:12]}… on the driver); give every worker the same files")
        if self.loras:
            from ..lora import LoraSpec, fuse_adapters

            fuse_adapters(model, [LoraSpec(f, s) for f, s in self.loras])
        return model, {g.name: list(g.inputs) for g in component_graphs(model)}

    def run(self, state, payload) -> tuple[dict, dict[str, np.ndarray]]:
        model, graphs = state
        k, req, picks = payload
        return record_trajectory(model, k, req, picks, graphs)


def record_trajectory(model, k: int, req, picks: list[int], graphs: dict[str, list[str]]):
    """Run trajectory ``k``; record the UNet's inputs at the steps ``picks`` and every other component's
    input once. Returns the trajectory's manifest entry and the records."""
    from ..golden import component_inputs
    from ..reference import reference_generate

    run = reference_generate(model, req, record_all=True)
    if len(run.unet_calls) != len(run.timesteps) or len(run.unet_calls) < req.steps:
        raise RuntimeError(f"the reference made {len(run.unet_calls)} UNet calls for {len(run.timesteps)} timesteps "
                           f"({req.steps} steps)")
    records = [("unet", {n: run.unet_calls[i][n] for n in graphs["unet"]}) for i in picks]
    records += [(name, {n: feeds[n] for n in graphs[name]})
                for name, feeds in sorted(component_inputs(model, run, req).items()) if name != "unet" and name in graphs]
    arrays = {f"{j:04d}/{name}/{n}": np.ascontiguousarray(a) for j, (name, feeds) in enumerate(records)
              for n, a in feeds.items()}
    entry = {"sample": k, "seed": req.seed, "steps": picks, "timesteps": [int(run.timesteps[i]) for i in picks]}
    if model.conditioning.kind == "text":
        entry["prompt"] = req.prompt
    if model.conditioning.kind == "class":
        entry["class_label"] = req.class_label
    return entry, arrays


def records_of(arrays: dict[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The records of :func:`record_trajectory`'s arrays, in their order, each input in its recorded order."""
    records: dict[int, tuple[str, dict[str, np.ndarray]]] = {}
    for key, a in arrays.items():
        j, name, n = key.split("/", 2)
        records.setdefault(int(j), (name, {}))[1][n] = a
    return [records[j] for j in sorted(records)]
