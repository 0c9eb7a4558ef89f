"""Will a size fit? An estimate of the memory the build needs per declared size, checked before any work.

The build runs each component in torch and in ONNX Runtime at batch 2 (classifier-free guidance) at every
declared size. Two things grow with the size:

* attention: the exported graphs compute it as MatMul + Softmax, so each attention layer holds a score
  matrix of ``batch × heads × tokens²`` floats, and the softmax writes another; ``tokens`` is the number of
  positions at the layer's resolution. This is what explodes (a 4096² image on a model trained at 32²);
* feature maps: ``batch × channels × positions`` floats at each level of a component, a few of them live
  at once.

A component's estimate is the larger of the two (they are not alive at the same time).

The estimate is deliberately simple: it is there to refuse what cannot possibly fit (with the number), not
to predict the peak to the byte; ``FEATURE_MAPS_LIVE`` and the two score matrices are generous.
"""

from __future__ import annotations

from ldm_runtime.errors import UserError

from .model import LoadedModel

BATCH = 2
FLOAT = 4                 # bytes
FEATURE_MAPS_LIVE = 8     # feature maps of the largest size alive at once (residual, norm, conv in and out, ...)


def estimate_bytes(model: LoadedModel, width: int, height: int, batch: int = BATCH) -> dict[str, int]:
    """Estimated peak bytes per component at ``width`` x ``height`` (see the module docstring)."""
    out: dict[str, int] = {}
    for level in model.feature_maps:
        positions = max(1, height // level.downsample) * max(1, width // level.downsample)
        out[level.component] = max(out.get(level.component, 0),
                                   batch * level.channels * positions * FLOAT * FEATURE_MAPS_LIVE)
    for site in model.attention:
        tokens = max(1, height // site.downsample) * max(1, width // site.downsample)
        out[site.component] = max(out.get(site.component, 0), 2 * batch * site.heads * tokens * tokens * FLOAT)
    return out


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_sizes_fit(model: LoadedModel, sizes, available: int | None = None) -> None:
    """Refuse, in one line naming the estimate, a size whose largest component cannot fit in memory."""
    available = available_bytes() if available is None else available
    for w, h in sizes:
        est = estimate_bytes(model, w, h)
        if not est:  # a custom model: its architecture is not known, so there is nothing to estimate
            return
        name, need = max(est.items(), key=lambda kv: kv[1])
        if need > available:
            raise UserError(f"resolution {w}x{h} does not fit: the {name} needs about {_gib(need)} at batch "
                            f"{BATCH} (estimate), and this machine has {_gib(available)} free; the model was "
                            f"trained at {model.default_resolution[0]}x{model.default_resolution[1]}: choose a "
                            "smaller --resolution")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**40 else f"{n / 2**40:,.1f} TiB"
