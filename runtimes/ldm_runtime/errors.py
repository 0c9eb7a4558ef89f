"""Errors a user can act on, kept apart from our own bugs.

Anything raised as :class:`UserError` (or a subclass) is printed by the CLIs as
one line, without a traceback, and exits non-zero. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


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
