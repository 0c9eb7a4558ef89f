"""Errors a user can act on, kept apart from our own bugs.

Anything raised as :class:`UserError` (or a subclass) is printed by the CLIs as
one line, without a traceback, and exits non-zero. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

MESSAGE_LIMIT = 200  # characters of a library's message quoted in one of ours


def one_line(exc: BaseException, *, with_type: bool = True, limit: int = MESSAGE_LIMIT) -> str:
    """The first non-empty line of ``exc``'s message, cut at ``limit`` characters, after its type name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    name = type(exc).__name__
    if not text:
        return name
    return f"{name}: {text}" if with_type else text


class UserError(Exception):
    """Bad input, a missing file or package, a wrong device: the user can fix it."""


class BundleError(UserError):
    """The bundle is missing, corrupt, tampered with, or of an unknown schema."""


class BackendUnavailable(UserError):
    """A backend package is not installed, or the device it needs is absent."""

    def __init__(self, what: str, pip_hint: str):
        super().__init__(f"{what} is not installed; install it with: pip install {pip_hint}")
        self.pip_hint = pip_hint


class NonFiniteOutput(UserError):
    """A component produced NaN or Inf."""


class ParityError(UserError):
    """Runtime output differs from the reference by more than the tolerance."""


class BelowTolerance(Exception):
    """Numbers over tolerance (or under a quality target): exit 1, distinct from the user's error (2)."""
