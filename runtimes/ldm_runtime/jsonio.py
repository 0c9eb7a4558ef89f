"""Standard JSON out of every report: strict parsers (JavaScript's, most CI tools) reject NaN and Infinity.

A non-finite number is written as the string ``"inf"``, ``"-inf"`` or ``"nan"``, so a reader still sees
what it was (an identical image's PSNR is ``"inf"``).
"""

from __future__ import annotations

import json
import math
from typing import Any


def json_number(x: float, digits: int | None = None) -> float | str:
    """``x`` as a JSON value: rounded to ``digits`` when given; a non-finite value as its name."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return round(x, digits) if digits is not None else x


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by :func:`json_number`'s string (recursively)."""
    if isinstance(obj, float):
        return json_number(obj)
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """``json.dumps`` that never writes NaN or Infinity (numpy scalars become plain numbers)."""
    return json.dumps(strict(obj), allow_nan=False, default=_plain, **kwargs)


def _plain(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return strict(obj.item())
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist())
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
