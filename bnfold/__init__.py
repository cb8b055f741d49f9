"""bnfold: fold BatchNormalization away in ONNX models, and prove the result is the same.

    >>> import bnfold
    >>> result = bnfold.fold(model_proto)          # FoldResult(model, records)
    >>> check = bnfold.verify(model_proto, result.model)
    >>> report = bnfold.fold_file("in.onnx", "out.onnx")   # folds, checks, writes

The names below are imported on first use, so `import bnfold` (and `bnfold --help`)
does not pay for onnx-ir and numpy until something needs them.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "FoldResult": "bnfold.api",
    "fold": "bnfold.api",
    "fold_file": "bnfold.api",
    "BnfoldError": "bnfold.errors",
    "CheckFailedError": "bnfold.errors",
    "InputError": "bnfold.errors",
    "OutputError": "bnfold.errors",
    "RuntimeUnavailableError": "bnfold.errors",
    "BatchNormFoldPass": "bnfold.folding.fold_pass",
    "BnRecord": "bnfold.report",
    "NodeRecord": "bnfold.report",
    "CheckResult": "bnfold.report",
    "FoldReport": "bnfold.report",
    "OutputCheck": "bnfold.report",
    "verify": "bnfold.check.equivalence",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bnfold' has no attribute '{name}'")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
