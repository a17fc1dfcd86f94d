"""Error types, split by whose fault it is.

`AuditorError` and its subclasses: a problem with what the user gave (the CLI: one line, exit 2).
`InternalError`: a bug in auditor (an internal check failed); the CLI asks to report it (exit 3).
"""

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


class SettingsError(AuditorError):
    """A setting that does not exist, or a value it cannot take."""


class ConfigError(AuditorError):
    """A configuration file (auditor.toml, [tool.auditor] in pyproject.toml) that cannot be read or holds a wrong key."""


class RepairError(AuditorError):
    """The model cannot be repaired as it is (the reason names what to do instead)."""


class InternalError(Exception):
    """A bug in auditor: an internal check failed. Not an `AuditorError`: the input is not at fault."""
