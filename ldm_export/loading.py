"""Load a trained model into one in-memory description (:class:`ldm_export.model.LoadedModel`),
whatever its family or source.

Sources (:mod:`ldm_export.sources`): a local diffusers pipeline folder (``model_index.json``;
safetensors or .bin weights) of any of the paper's families, an original CompVis/Stability
single-file checkpoint with its YAML, or components from factories named in a custom model
``.json``.
"""

from __future__ import annotations

from pathlib import Path

from ldm_runtime.errors import UserError

from .model import LoadedModel
from .sources.diffusers import PIPELINES

SUPPORTED = ("a diffusers pipeline folder (model_index.json) of: " + ", ".join(PIPELINES)
             + "; an original .ckpt/.safetensors checkpoint with --config YAML; or a custom model .json "
             "naming component factories")
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")


def _describe(path: Path) -> str:
    if not path.exists():
        return "nothing (the path does not exist)"
    if path.is_file():
        return f"a file ({path.suffix or 'no extension'})"
    names = sorted(p.name for p in path.iterdir())[:6]
    return f"a folder without model_index.json (it holds: {', '.join(names) or 'nothing'})"


def load_model(path: str | Path, config: str | Path | None = None, tokenizer: str | Path | None = None,
               factories: dict[str, str | None] | None = None) -> LoadedModel:
    """Load ``path`` or raise a one-line :class:`UserError` saying what was found and what is supported.

    ``factories`` (``--unet`` … ``--text-encoder``) apply to a custom model ``.json`` only, ``config`` and
    ``tokenizer`` to a single-file checkpoint only: given with another kind of model, they are refused
    rather than ignored."""
    path = Path(path)
    custom = path.suffix == ".json" and path.name != "model_index.json"
    checkpoint = path.is_file() and path.suffix in CHECKPOINT_SUFFIXES
    given = [f"--{k.replace('_', '-') if k != 'vae_decoder' else 'decoder'}" for k, v in (factories or {}).items() if v]
    if given and not custom:
        raise UserError(f"{' '.join(given)} name{'s' if len(given) == 1 else ''} a factory of a custom model, but "
                        f"{path} is not a custom model .json; leave {'it' if len(given) == 1 else 'them'} out "
                        "(see docs/custom_models.md)")
    for flag, value in (("--config", config), ("--tokenizer", tokenizer)):
        if value is not None and not checkpoint:
            raise UserError(f"{flag} applies to a single-file checkpoint (.ckpt/.safetensors), but {path} is not "
                            f"one; leave {flag} out")
    if custom:
        from .sources.custom import load_custom

        return load_custom(path, factories)
    if checkpoint:
        if config is None:
            raise UserError(f"{path.name} is a single-file checkpoint: pass its original YAML with --config")
        from .sources.compvis import load_checkpoint

        return load_checkpoint(path, Path(config), Path(tokenizer) if tokenizer else None)
    if not (path / "model_index.json").is_file():
        raise UserError(f"cannot load {path}: found {_describe(path)}; supported: {SUPPORTED}")
    from .sources.diffusers import load_diffusers

    return load_diffusers(path)
