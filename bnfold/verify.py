"""The equivalence check: original vs folded model on onnxruntime.

Both models run with every graph optimization off (ORT's own BASIC level already
folds BN, which would hide a wrong fold), on the same seeded inputs. Per output we
compare max|a − b| against atol + rtol·max|a| (a = original, the reference), and
NaN/Inf positions must match exactly.

Default tolerances, by the output's element type (rtol relative to the output's
scale max|a|, atol absolute):

    float64   rtol 1e-9   atol 1e-12
    float32   rtol 1e-5   atol 1e-7
    float16   rtol 8e-3   atol 1e-4    (8 × the dtype's epsilon)
    bfloat16  rtol 6e-2   atol 1e-3
    others    exact

Free dimensions: axis 0 gets 2 (a batch > 1 exercises per-sample broadcasting),
other free dimensions get 16, unless `shapes` names the input's full shape.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from bnfold.errors import InputError, RuntimeUnavailableError, first_line
from bnfold.report import CheckResult, OutputCheck

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-9, 1e-12),
    "float32": (1e-5, 1e-7),
    "float16": (8e-3, 1e-4),
    "bfloat16": (6e-2, 1e-3),
}
FREE_BATCH_DIM = 2
FREE_OTHER_DIM = 16
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}

def verify(original, folded, *, inputs: Mapping[str, np.ndarray] | None = None,
           shapes: Mapping[str, tuple[int, ...]] | None = None, rtol: float | None = None,
           atol: float | None = None, seed: int = 0) -> CheckResult:
    """Run both models on the same inputs and compare every output.

    `original` and `folded` may each be a path, an onnx.ModelProto or an onnx_ir.Model.
    Raises RuntimeUnavailableError when onnxruntime cannot run the original.
    """
    with tempfile.TemporaryDirectory(prefix="bnfold-check-") as scratch:
        try:
            reference_session = _session(original, Path(scratch) / "original.onnx")
            feeds = make_inputs(reference_session, inputs or {}, shapes or {}, seed)
            expected = reference_session.run(None, feeds)
        except (InputError, RuntimeUnavailableError):
            raise
        except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
            raise RuntimeUnavailableError(
                f"onnxruntime cannot run the original model ({first_line(error)}); "
                "use --no-check to write the folded model without verification") from error
        names = [output.name for output in reference_session.get_outputs()]
        shapes_fed = {name: list(array.shape) for name, array in feeds.items()}
        try:
            actual = _session(folded, Path(scratch) / "folded.onnx").run(names, feeds)
        except Exception as error:  # noqa: BLE001 - the folded model is ours: report, don't crash
            note = f"onnxruntime cannot run the folded model: {first_line(error)}"
            failed = [OutputCheck(name, float("inf"), float("inf"), 0.0, False, note) for name in names]
            return CheckResult(passed=False, outputs=failed, inputs=shapes_fed)
    outputs = [compare_output(n, e, a, rtol, atol) for n, e, a in zip(names, expected, actual)]
    return CheckResult(passed=all(o.passed for o in outputs), outputs=outputs, inputs=shapes_fed)


def compare_output(name: str, expected, actual, rtol: float | None = None,
                   atol: float | None = None) -> OutputCheck:
    """Compare one output; `expected` comes from the original model."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    default_rtol, default_atol = DEFAULT_TOLERANCES.get(expected.dtype.name, (0.0, 0.0))
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    if expected.shape != actual.shape:
        note = f"shape {actual.shape} instead of {expected.shape}"
        return OutputCheck(name, float("inf"), float("inf"), 0.0, False, note)
    if expected.dtype.kind not in "fc":
        equal = bool(np.array_equal(expected, actual))
        error = 0.0 if equal else float("inf")
        return OutputCheck(name, error, error, 0.0, equal, None if equal else "values differ")
    a64, b64 = expected.astype(np.float64), actual.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    special_equal = np.array_equal(np.isnan(a64), np.isnan(b64)) and np.array_equal(
        np.where(np.isinf(a64), a64, 0), np.where(np.isinf(b64), b64, 0))
    max_abs = float(np.max(np.abs(a64[finite] - b64[finite]), initial=0.0))
    scale = float(np.max(np.abs(a64[finite]), initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    tolerance = atol + rtol * scale
    passed = special_equal and max_abs <= tolerance
    note = None if special_equal else "NaN/Inf positions differ"
    return OutputCheck(name, max_abs, max_rel, tolerance, passed, note)


def make_inputs(session, given: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]],
                seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs for every session input not in `given`."""
    rng = np.random.default_rng(seed)
    known = {i.name for i in session.get_inputs()}
    unknown = sorted((set(given) | set(shapes)) - known)
    if unknown:
        raise InputError(f"no model input named '{unknown[0]}' (inputs: {', '.join(sorted(known))})")
    feeds = {}
    for spec in session.get_inputs():
        if spec.name in given:
            feeds[spec.name] = np.asarray(given[spec.name])
            continue
        dtype = _ORT_TYPES.get(spec.type)
        if dtype is None:
            raise InputError(f"cannot make data for input '{spec.name}' of type {spec.type}; pass it with --inputs")
        shape = tuple(shapes[spec.name]) if spec.name in shapes else _concrete_shape(spec.shape)
        feeds[spec.name] = _random(rng, shape, dtype)
    return feeds


def _concrete_shape(shape) -> tuple[int, ...]:
    dims = []
    for axis, dim in enumerate(shape):
        if isinstance(dim, int) and dim >= 0:
            dims.append(dim)
        else:
            dims.append(FREE_BATCH_DIM if axis == 0 else FREE_OTHER_DIM)
    return tuple(dims)


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(0, 4, size=shape).astype(dtype)


def _session(source, scratch_path: Path):
    import onnxruntime as ort  # imported here: it is slow to import and only the check needs it

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if isinstance(source, (str, os.PathLike)):
        return ort.InferenceSession(os.fspath(source), options, providers=providers)
    if isinstance(source, ir.Model):
        ir.save(source, scratch_path, external_data=f"{scratch_path.name}.data")
        return ort.InferenceSession(os.fspath(scratch_path), options, providers=providers)
    if isinstance(source, onnx.ModelProto):
        if source.ByteSize() < 2**31 - 1:
            return ort.InferenceSession(source.SerializeToString(), options, providers=providers)
        onnx.save(source, scratch_path, save_as_external_data=True, location=f"{scratch_path.name}.data")
        return ort.InferenceSession(os.fspath(scratch_path), options, providers=providers)
    raise TypeError(f"cannot run a {type(source).__name__}; pass a path, onnx.ModelProto or onnx_ir.Model")

