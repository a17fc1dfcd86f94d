"""auditor: find and remove backdoors in ONNX classifiers from a few clean samples."""

from auditor.api import audit, repair
from auditor.detect.tamper import Finding
from auditor.detect.verdict import Verdict
from auditor.errors import (
    AuditorError,
    ConfigError,
    DataError,
    DeviceError,
    InternalError,
    ModelError,
    OutputError,
    RepairError,
    SettingsError,
)
from auditor.evaluate import Evaluation, evaluate
from auditor.mitigation.plan import RepairOutcome
from auditor.report import Report
from auditor.settings import Settings
from auditor.version import __version__

__all__ = [
    "AuditorError", "ConfigError", "DataError", "DeviceError", "Evaluation", "Finding", "InternalError", "ModelError", "OutputError",
    "RepairError", "RepairOutcome",
    "Report", "Settings", "SettingsError", "Verdict", "__version__", "audit", "evaluate", "repair",
]
