"""The equivalence check: original vs folded model on onnxruntime.

Both models run with every graph optimization off (ORT's own BASIC level already
folds BN, which would hide a wrong fold), on the same seeded inputs. NaN/Inf
positions must match exactly. Per output, a = original, b = folded:

* float32/float64 outputs pass when max|a − b| ≤ atol + rtol·max|a|.
* float16/bfloat16 outputs are compared against r, a float32 run of the original
  (its weights widened exactly): they pass when the folded model is about as close
  to r as the original is, max|b − r| ≤ 2·max|a − r| + atol + rtol·max|r|.
  Without a float32 run they pass when max|a − b| ≤ atol + rtol·max|a|, with the
  looser "direct" tolerances below.
* If onnxruntime has no kernels for the original's float type (bfloat16 or float64
  Conv, say), both models are converted to float32 and compared: half-precision
  models with the half-precision direct tolerances (the folded weights were rounded
  to the narrow type, so they differ by that type's rounding), float64 models with
  the float32 tolerances.
* Integer and bool outputs must be equal.

Free dimensions: axis 0 gets 2 (a batch > 1 exercises per-sample broadcasting),
other free dimensions get 16, unless `shapes` names the input's full shape.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto

from bnfold.errors import InputError, RuntimeUnavailableError, first_line
from bnfold.precision import HALF_TYPES, convert_float_type, has_float_type, has_half_precision
from bnfold.report import CheckResult, OutputCheck

logger = logging.getLogger(__name__)

# (rtol, atol) by the output's dtype; "direct" = compared with the original itself.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-9, 1e-12),
    "float32": (1e-5, 1e-7),
    "float16": (2e-3, 1e-4),  # against the float32 reference, on top of 2× the original's own error
    "bfloat16": (1.6e-2, 1e-3),
}
DIRECT_HALF_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (8e-3, 1e-4),  # 8 × float16's epsilon
    "bfloat16": (6e-2, 1e-3),
}
FREE_BATCH_DIM = 2
FREE_OTHER_DIM = 16
_PROTOBUF_LIMIT = 2**31 - 1
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class _Tolerance:
    rtol: float | None
    atol: float | None

    def pick(self, table: Mapping[str, tuple[float, float]], dtype_name: str) -> tuple[float, float]:
        default_rtol, default_atol = table.get(dtype_name, (0.0, 0.0))
        return (default_rtol if self.rtol is None else self.rtol,
                default_atol if self.atol is None else self.atol)


def verify(original, folded, *, inputs: Mapping[str, np.ndarray] | None = None,
           shapes: Mapping[str, tuple[int, ...]] | None = None, rtol: float | None = None,
           atol: float | None = None, seed: int = 0) -> CheckResult:
    """Run both models on the same inputs and compare every output.

    `original` and `folded` may each be a path, an onnx.ModelProto or an onnx_ir.Model.
    Raises RuntimeUnavailableError when onnxruntime cannot run the original.
    """
    tolerance = _Tolerance(rtol, atol)
    with tempfile.TemporaryDirectory(prefix="bnfold-check-") as scratch:
        original = _runnable(original, Path(scratch) / "original.onnx")
        folded = _runnable(folded, Path(scratch) / "folded.onnx")
        try:
            session = _session(original)
            feeds = make_inputs(session, inputs or {}, shapes or {}, seed)
            expected = session.run(None, feeds)
        except (InputError, RuntimeUnavailableError):
            raise
        except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
            stand_in = _check_in_float32(original, folded, inputs, shapes, seed, tolerance)
            if stand_in is not None:
                return stand_in
            raise RuntimeUnavailableError(
                f"onnxruntime cannot run the original model ({first_line(error)}); "
                "use --no-check to write the folded model without verification") from error
        names = [output.name for output in session.get_outputs()]
        try:
            actual = _session(folded).run(names, feeds)
        except Exception as error:  # noqa: BLE001 - the folded model is ours: report, don't crash
            return _unrunnable(names, f"onnxruntime cannot run the folded model: {first_line(error)}", feeds)
        references = _float32_reference(original, feeds, names, expected)
    return _result([compare_output(n, e, a, tolerance.rtol, tolerance.atol, reference=r)
                    for n, e, a, r in zip(names, expected, actual, references, strict=True)], feeds)


def compare_output(name: str, expected, actual, rtol: float | None = None, atol: float | None = None,
                   reference=None) -> OutputCheck:
    """Compare one output; `expected` comes from the original, `reference` from its float32 run."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape:
        note = f"shape {actual.shape} instead of {expected.shape}"
        return OutputCheck(name, float("inf"), float("inf"), 0.0, False, note)
    if expected.dtype.kind not in "fc":
        equal = bool(np.array_equal(expected, actual))
        error = 0.0 if equal else float("inf")
        return OutputCheck(name, error, error, 0.0, equal, None if equal else "values differ")
    tolerance = _Tolerance(rtol, atol)
    a64, b64 = expected.astype(np.float64), actual.astype(np.float64)
    special_equal = np.array_equal(np.isnan(a64), np.isnan(b64)) and np.array_equal(
        np.where(np.isinf(a64), a64, 0), np.where(np.isinf(b64), b64, 0))
    max_abs, scale = _max_error(a64, b64), _max_magnitude(a64)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    note = None if special_equal else "NaN/Inf positions differ"
    if reference is not None and expected.dtype.name in DIRECT_HALF_TOLERANCES:
        r64 = np.asarray(reference, dtype=np.float64)
        original_error, folded_error = _max_error(a64, r64), _max_error(b64, r64)
        rtol_used, atol_used = tolerance.pick(DEFAULT_TOLERANCES, expected.dtype.name)
        allowed = 2 * original_error + atol_used + rtol_used * _max_magnitude(r64)
        note = note or (f"vs float32 run of the original: folded {folded_error:.3e}, "
                        f"original {original_error:.3e}")
        return OutputCheck(name, max_abs, max_rel, allowed, special_equal and folded_error <= allowed, note)
    table = DIRECT_HALF_TOLERANCES if expected.dtype.name in DIRECT_HALF_TOLERANCES else DEFAULT_TOLERANCES
    rtol_used, atol_used = tolerance.pick(table, expected.dtype.name)
    allowed = atol_used + rtol_used * scale
    return OutputCheck(name, max_abs, max_rel, allowed, special_equal and max_abs <= allowed, note)


def _max_error(a64: np.ndarray, b64: np.ndarray) -> float:
    finite = np.isfinite(a64) & np.isfinite(b64)
    return float(np.max(np.abs(a64[finite] - b64[finite]), initial=0.0))


def _max_magnitude(a64: np.ndarray) -> float:
    return float(np.max(np.abs(a64[np.isfinite(a64)]), initial=0.0))


def _result(outputs: list[OutputCheck], feeds: Mapping[str, np.ndarray]) -> CheckResult:
    """The check's verdict over `outputs`, with the input shapes it ran on."""
    return CheckResult(passed=all(o.passed for o in outputs), outputs=outputs, inputs=_shapes(feeds))


def _unrunnable(names: list[str], note: str, feeds: Mapping[str, np.ndarray]) -> CheckResult:
    failed = [OutputCheck(name, float("inf"), float("inf"), 0.0, False, note) for name in names]
    return CheckResult(passed=False, outputs=failed, inputs=_shapes(feeds))


def _shapes(feeds: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    return {name: list(array.shape) for name, array in feeds.items()}


def _float32_reference(original, feeds: dict, names: list[str], expected: list) -> list:
    """The float32 run of a half-precision original, output by output (None where not applicable)."""
    if not any(np.asarray(e).dtype.name in DIRECT_HALF_TOLERANCES for e in expected):
        return [None] * len(names)
    try:
        widened = convert_float_type(_load(original), HALF_TYPES, TensorProto.FLOAT)
        session = _session(widened.SerializeToString())
        results = session.run(names, _as_float32_feeds(feeds))
    except Exception as error:  # noqa: BLE001 - no reference only means the direct comparison
        logger.info("no float32 reference for the half-precision check: %s", first_line(error))
        return [None] * len(names)
    return list(results)


def _check_in_float32(original, folded, inputs, shapes, seed: int, tolerance: _Tolerance) -> CheckResult | None:
    """Compare both models converted to float32, for float16/bfloat16/float64 models that
    onnxruntime has no kernels for (bfloat16 or float64 Conv, say). None if that fails too."""
    try:
        original_proto = _load(original)
        source, table = _float32_stand_in(original_proto)
        if source is None:
            return None
        converted = [convert_float_type(p, source, TensorProto.FLOAT) for p in (original_proto, _load(folded))]
        session = _session(converted[0].SerializeToString())
        feeds = make_inputs(session, _as_float32_feeds(inputs or {}), shapes or {}, seed)
        names = [output.name for output in session.get_outputs()]
        expected = session.run(names, feeds)
        actual = _session(converted[1].SerializeToString()).run(names, feeds)
    except (InputError, RuntimeUnavailableError):
        raise
    except Exception as error:  # noqa: BLE001 - fall back to "cannot run"
        logger.info("the float32 stand-in check failed too: %s", first_line(error))
        return None
    narrow = {o.name: o.type.tensor_type.elem_type for o in original_proto.graph.output}
    note = "both models run converted to float32 (onnxruntime lacks kernels for the original's type)"
    outputs = []
    for name, e, a in zip(names, expected, actual, strict=True):
        dtype_name = onnx.helper.tensor_dtype_to_np_dtype(narrow.get(name, TensorProto.FLOAT)).name
        rtol, atol = tolerance.pick(table, dtype_name)
        check = compare_output(name, e, a, rtol, atol)
        outputs.append(OutputCheck(check.name, check.max_abs_err, check.max_rel_err, check.tolerance,
                                   check.passed, check.note or note))
    return _result(outputs, feeds)


def _float32_stand_in(model: onnx.ModelProto):
    """Which float types to convert to float32, and the tolerances (by the original output's dtype)."""
    float32 = DEFAULT_TOLERANCES["float32"]
    if has_half_precision(model):
        return HALF_TYPES, {**DIRECT_HALF_TOLERANCES, "float32": float32}
    if has_float_type(model, TensorProto.DOUBLE):
        return frozenset({TensorProto.DOUBLE}), {"float64": float32, "float32": float32}
    return None, None


def _as_float32_feeds(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: (np.asarray(a).astype(np.float32) if np.asarray(a).dtype.kind == "f" else a)
            for name, a in feeds.items()}


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


def _runnable(source, scratch_path: Path):
    """A path or serialized bytes onnxruntime can open (sessions from paths keep >2 GB models possible)."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, ir.Model):
        ir.save(source, scratch_path, external_data=f"{scratch_path.name}.data")
        return os.fspath(scratch_path)
    if isinstance(source, onnx.ModelProto):
        if source.ByteSize() < _PROTOBUF_LIMIT:
            return source.SerializeToString()
        onnx.save(source, scratch_path, save_as_external_data=True, location=f"{scratch_path.name}.data")
        return os.fspath(scratch_path)
    raise TypeError(f"cannot run a {type(source).__name__}; pass a path, onnx.ModelProto or onnx_ir.Model")


def _load(runnable) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(runnable) if isinstance(runnable, bytes) else onnx.load(runnable)


def _session(runnable):
    import onnxruntime as ort  # imported here: it is slow to import and only the check needs it

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(runnable, options, providers=["CPUExecutionProvider"])
