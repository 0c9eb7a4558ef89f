"""Weight compression of Core ML programs with ``coremltools.optimize.coreml`` (runs on Linux).

* :func:`palettize`: k-means palettization (``constexpr_lut_to_dense``), 6 or 4 bits, one palette per
  tensor, or one per group of output channels on iOS 18 programs. k-means needs scikit-learn.
* :func:`int8_weights`: weight-only linear quantization, symmetric int8 per output channel
  (``constexpr_affine_dequantize`` below iOS 18, ``constexpr_blockwise_shift_scale`` from iOS 18).

Both keep coremltools' default weight threshold (tensors of 2048 elements or fewer stay as they are):
lowering it to 0 palettizes the UNet's timestep-frequency constant, and the UNet breaks.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from ldm_runtime.errors import BackendUnavailable, UserError

from .package import is_ios18, load, package_size, save, weights_size

NBITS = (4, 6)


def _cto():
    import coremltools.optimize.coreml as cto

    return cto


def _needs_sklearn() -> None:
    try:
        import sklearn  # noqa: F401  (coremltools' k-means)
    except ImportError as e:
        raise BackendUnavailable("k-means palettization (package 'scikit-learn')", "scikit-learn") from e


def _record(method: str, source: Path, out: Path, model, t0: float, **details) -> dict:
    return {"method": method, **details, "file": Path(out).name,
            "deployment": "iOS18" if is_ios18(model) else "iOS17/macOS14",
            "size_bytes": {"source": package_size(source), "compressed": package_size(out)},
            "weight_bytes": {"source": weights_size(source), "compressed": weights_size(out)},
            "seconds": round(time.perf_counter() - t0, 2)}


def palettizer_config(nbits: int, per_grouped_channel: bool = False, group_size: int = 16):
    """The k-means ``OpPalettizerConfig`` used here (coremltools' default weight threshold)."""
    cto = _cto()
    if per_grouped_channel:
        return cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_grouped_channel",
                                      group_size=group_size)
    return cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_tensor")


def palettize(mlpackage: Path, out: Path, *, nbits: int = 6, per_grouped_channel: bool = False,
              group_size: int = 16) -> dict:
    """k-means palettize the weights of ``mlpackage`` into ``out``; returns the record with sizes."""
    if nbits not in NBITS:
        raise UserError(f"palettization to {nbits} bits; expected one of {NBITS}")
    _needs_sklearn()
    t0 = time.perf_counter()
    model = load(mlpackage)
    if per_grouped_channel and not is_ios18(model):
        raise UserError(f"{Path(mlpackage).name}: grouped palettes need an iOS 18 program; got an older "
                        f"deployment target; convert with deployment_target='iOS18' or use one palette per tensor")
    config = _cto().OptimizationConfig(global_config=palettizer_config(nbits, per_grouped_channel, group_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compressed = _cto().palettize_weights(model, config)
    save(compressed, out)
    granularity = f"per_grouped_channel ({group_size})" if per_grouped_channel else "per_tensor"
    return _record("palettize-kmeans", mlpackage, out, compressed, t0, nbits=nbits, granularity=granularity)


def int8_weights(mlpackage: Path, out: Path) -> dict:
    """Quantize the weights of ``mlpackage`` to int8 (symmetric, per output channel) into ``out``."""
    t0 = time.perf_counter()
    model = load(mlpackage)
    cto = _cto()
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compressed = cto.linear_quantize_weights(model, config)
    save(compressed, out)
    return _record("int8-weights", mlpackage, out, compressed, t0, dtype="int8", granularity="per_channel")
