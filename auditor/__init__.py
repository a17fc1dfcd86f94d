"""auditor: find and remove backdoor channels in ONNX classifiers from a few clean samples."""

from auditor.api import audit, repair
from auditor.errors import AuditorError, DataError, DeviceError, ModelError, OutputError
from auditor.evaluate import Evaluation, evaluate
from auditor.report import Report
from auditor.version import __version__

__all__ = [
    "AuditorError", "DataError", "DeviceError", "Evaluation", "ModelError", "OutputError",
    "Report", "__version__", "audit", "evaluate", "repair",
]
