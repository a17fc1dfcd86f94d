"""Error types. The CLI maps every one of them to a single line and exit code 2."""

from __future__ import annotations


class AuditorError(Exception):
    """Base class: a problem with what the user gave us, never a bug in auditor."""


class ModelError(AuditorError):
    """The model cannot be read, is unsafe to read, or cannot be run or audited."""


class DataError(AuditorError):
    """The clean/test samples do not fit the model or cannot be read safely."""


class OutputError(AuditorError):
    """An output cannot be written where asked."""


class DeviceError(AuditorError):
    """The requested execution device is not available."""
