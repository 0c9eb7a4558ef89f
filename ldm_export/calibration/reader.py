"""Reading a calibration set back, with every check a user can act on (numpy + safetensors only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ldm_runtime.bundle import sha256_file
from ldm_runtime.errors import UserError

from .format import FORMAT, FORMAT_VERSION, MANIFEST, parse_key, record_key

RECOLLECT = "collect it again with `ldm-export calibrate`"


class CalibrationSet:
    """A validated calibration set: its manifest, and the recorded inputs of each component."""

    def __init__(self, path: Path, manifest: dict, records: dict[str, dict[str, list[int]]]):
        self.path, self.manifest = path, manifest
        self._records = records  # component → shard file → record indices in it

    @classmethod
    def open(cls, path: str | Path, model_sha256: str | None = None) -> CalibrationSet:
        """Open ``path`` and check its manifest, every shard's sha256 and keys, and (when given) that it was
        collected from the model whose ``source_sha256`` is ``model_sha256``; raise UserError otherwise."""
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"calibration folder {path} does not exist; create it with `ldm-export calibrate`")
        manifest = _read_manifest(path)
        if model_sha256 is not None and manifest["model"]["sha256"] != model_sha256:
            m = manifest["model"]
            raise UserError(f"calibration set {path} was collected from model '{m['name']}' (sha256 "
                            f"{m['sha256'][:12]}…) but this model is {model_sha256[:12]}…; collect a new one "
                            "with `ldm-export calibrate`")
        try:
            records = {name: _check_shards(path, name, comp, manifest["files"])
                       for name, comp in manifest["components"].items()}
        except (KeyError, TypeError) as e:  # a hand-edited manifest that lacks a field
            raise UserError(f"{path / MANIFEST} is corrupt: a component entry lacks {e}; {RECOLLECT}") from e
        return cls(path, manifest, records)

    @property
    def components(self) -> list[str]:
        """Components with records, sorted by name."""
        return sorted(self.manifest["components"])

    def count(self, component: str) -> int:
        return int(self._component(component)["count"])

    def summary(self) -> dict:
        """What a bundle's manifest records about the set it was calibrated with (no paths: a set collected
        into a scratch folder is identified by its content)."""
        m = self.manifest
        keys = ("seed", "steps", "samples", "per_trajectory", "guidance_scale", "eta", "resolution", "prompts")
        t = m["timesteps"]
        return {"model_sha256": m["model"]["sha256"], **{k: m.get(k) for k in keys},
                "records": {c: self.count(c) for c in self.components},
                "timesteps": {"min": t["min"], "max": t["max"], "bins_covered": t["bins_covered"]},
                "manifest_sha256": sha256_file(self.path / MANIFEST)}

    def feeds(self, component: str) -> list[dict[str, np.ndarray]]:
        """One dict per recorded call of ``component``, keyed by its ONNX input names (in the graph's order),
        in record order: the UNet's records go trajectory by trajectory, noisiest step first."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        names = self._component(component)["input_names"]
        out: dict[int, dict[str, np.ndarray]] = {}
        for file, indices in self._records[component].items():
            try:
                arrays = load_file(str(self.path / file))
            except (SafetensorError, OSError) as e:
                raise UserError(f"calibration shard {self.path / file} cannot be read ({e}); {RECOLLECT}") from e
            for i in indices:
                out[i] = {n: arrays[record_key(i, n)] for n in names}
        return [out[i] for i in sorted(out)]

    def _component(self, component: str) -> dict:
        comps = self.manifest["components"]
        if component not in comps:
            raise UserError(f"calibration set {self.path} has no records of '{component}'; it has: "
                            f"{', '.join(sorted(comps))}")
        return comps[component]


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST
    if not file.is_file():
        raise UserError(f"{path} has no {MANIFEST}: it is not a calibration set, or an incomplete copy; {RECOLLECT}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is corrupt (not valid JSON: {e}); {RECOLLECT}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{file} is not a calibration manifest (format is not '{FORMAT}'); {RECOLLECT}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{file} has format version {manifest.get('format_version')!r}; this ldm-export reads "
                        f"version {FORMAT_VERSION}; {RECOLLECT}")
    missing = [k for k in ("model", "components", "files", "timesteps") if not isinstance(manifest.get(k), dict)]
    if missing:
        raise UserError(f"{file} is corrupt: it lacks {', '.join(missing)}; {RECOLLECT}")
    return manifest


def _check_shards(path: Path, component: str, comp: dict, hashes: dict) -> dict[str, list[int]]:
    """Hash and header check of every shard of ``component``; returns the record indices per shard."""
    from safetensors import SafetensorError, safe_open

    records: dict[str, list[int]] = {}
    for file in comp["shards"]:
        p = path / file
        if not p.is_file():
            raise UserError(f"calibration shard {p} is missing; {RECOLLECT}")
        if hashes.get(file) != sha256_file(p):
            raise UserError(f"calibration shard {p} was modified or truncated (its sha256 differs from "
                            f"{MANIFEST}); {RECOLLECT}")
        try:
            with safe_open(str(p), framework="np") as f:
                keys = list(f.keys())
            by_index: dict[int, set[str]] = {}
            for key in keys:
                i, name = parse_key(key)
                by_index.setdefault(i, set()).add(name)
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"calibration shard {p} cannot be read ({e}); {RECOLLECT}") from e
        if any(names != set(comp["input_names"]) for names in by_index.values()):
            raise UserError(f"calibration shard {p} does not hold the inputs {comp['input_names']} of every "
                            f"record; {RECOLLECT}")
        records[file] = sorted(by_index)
    found = sorted(i for v in records.values() for i in v)
    if found != list(range(int(comp["count"]))):
        raise UserError(f"calibration set {path} holds {len(found)} records of {component}, its manifest says "
                        f"{comp['count']}; {RECOLLECT}")
    return records
