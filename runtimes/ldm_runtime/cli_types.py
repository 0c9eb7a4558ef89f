"""Command-line value types shared by ``ldm-run`` and ``ldm-export``: numbers that must be finite."""

from __future__ import annotations

import math

import click


class FiniteFloat(click.FloatRange):
    """A float within a range that is also finite: ``nan`` and ``inf`` are refused (click's FloatRange lets
    them through, since every comparison with NaN is false)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def finite(min: float | None = None, max: float | None = None, min_open: bool = False) -> FiniteFloat:
    return FiniteFloat(min=min, max=max, min_open=min_open)
