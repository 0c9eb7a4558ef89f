"""Image sizes a bundle (or a model) can serve: multiples of its size step, within its declared range."""

from __future__ import annotations

from .errors import UserError


def check_multiple(width: int, height: int, multiple_of: int, vae_factor: int) -> None:
    """Refuse a size that is not a positive multiple of ``multiple_of`` (the autoencoder's factor
    ``vae_factor`` times the UNet's downsampling), suggesting the nearest one."""
    k = multiple_of
    if width > 0 and height > 0 and not width % k and not height % k:
        return
    raise UserError(
        f"resolution {width}x{height} is not a multiple of {k} (autoencoder factor {vae_factor} × UNet "
        f"downsampling {k // vae_factor}); try {max(k, round(width / k) * k)}x{max(k, round(height / k) * k)}")
