"""Exceptions for bad user input.

Every error a user can cause by bad input (a file, a flag, an array) is a
:class:`PoisonsiftError` with a one-line message that names the thing and says
what to fix; the CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


class PoisonsiftError(Exception):
    """Base class: a user-fixable problem with a clear message."""


class DataError(PoisonsiftError, ValueError):
    """Unreadable, missing or malformed data (images, labels, arrays, CSVs)."""


class ConfigError(PoisonsiftError, ValueError):
    """An invalid configuration value (poison rate, class index, trigger geometry ...)."""


class CheckpointError(PoisonsiftError, ValueError):
    """A missing, corrupt or mismatched model checkpoint."""
