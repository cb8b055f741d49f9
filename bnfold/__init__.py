"""bnfold: fold BatchNormalization away in ONNX models, and prove the result is the same.

    >>> import bnfold
    >>> result = bnfold.fold(model_proto)          # FoldResult(model, records)
    >>> check = bnfold.verify(model_proto, result.model)
    >>> report = bnfold.fold_file("in.onnx", "out.onnx")   # folds, checks, writes
"""

__version__ = "0.1.0"

from bnfold.api import FoldResult, fold, fold_file
from bnfold.errors import BnfoldError, CheckFailedError, InputError, OutputError, RuntimeUnavailableError
from bnfold.fold_pass import BatchNormFoldPass
from bnfold.report import BnRecord, CheckResult, FoldReport, OutputCheck
from bnfold.verify import verify

__all__ = [
    "BatchNormFoldPass",
    "BnRecord",
    "BnfoldError",
    "CheckFailedError",
    "CheckResult",
    "FoldReport",
    "FoldResult",
    "InputError",
    "OutputCheck",
    "OutputError",
    "RuntimeUnavailableError",
    "__version__",
    "fold",
    "fold_file",
    "verify",
]
