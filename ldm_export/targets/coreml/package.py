"""Small facts about ``.mlpackage`` folders shared by conversion, compression and splitting."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

PRECISIONS = ("fp16", "fp32")
DEPLOYMENT_TARGETS = ("macOS14", "iOS17", "iOS18")
SPEC_VERSION_IOS18 = 9   # Core ML model specification version of iOS 18 / macOS 15 programs


def ct_target(name: str):
    """The ``coremltools.target`` member of a deployment target name."""
    import coremltools as ct

    return getattr(ct.target, name)


def package_size(path: Path) -> int:
    """Bytes of every file in the package (the weights blob dominates)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def weights_size(path: Path) -> int:
    """Bytes of the package's weight files (what iOS maps into memory)."""
    return sum(f.stat().st_size for f in (Path(path) / "Data").rglob("weights/*") if f.is_file())


def versions() -> dict[str, str]:
    import coremltools
    import torch

    return {"coremltools": coremltools.__version__, "torch": torch.__version__}


def load(path: Path):
    """The package as an ``MLModel`` that is not compiled (Linux has no Core ML runtime)."""
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True)


def is_ios18(model) -> bool:
    """Whether the program needs iOS 18 / macOS 15 (grouped palettes and blockwise int4/int8 need that)."""
    return model.get_spec().specificationVersion >= SPEC_VERSION_IOS18


@contextlib.contextmanager
def atomic_package(out: Path) -> Iterator[Path]:
    """Yield a path to save a package to; it replaces ``out`` only when the block completes."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp / out.name
        old = tmp / "old"
        if out.exists():
            out.rename(old)
        (tmp / out.name).rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """coremltools without its progress bars and precision notices (the build reports its own stages): its
    modules' ``tqdm`` names point to a disabled tqdm, and its logger shows errors only, inside the block."""
    import logging
    import sys
    from functools import partial

    import tqdm

    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)  # before the import, which logs its untested-version notices
    import coremltools  # noqa: F401  (its modules, which bind tqdm at import)

    silent = partial(tqdm.tqdm, disable=True)
    patched = [(m, attr) for name, m in list(sys.modules.items()) if name.startswith("coremltools") and m is not None
               for attr in ("tqdm", "_tqdm") if getattr(m, attr, None) is tqdm.tqdm]
    for m, attr in patched:
        setattr(m, attr, silent)
    try:
        yield
    finally:
        logger.setLevel(level)
        for m, attr in patched:
            setattr(m, attr, tqdm.tqdm)


def save(model, out: Path) -> None:
    with atomic_package(out) as tmp:
        model.save(str(tmp))
