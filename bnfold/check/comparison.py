"""Comparing one value of the original and the folded model, channel by channel.

A value is compared per channel (axis 1; a value of rank ≤ 1 is one channel), so
a fold that is wrong only in a channel whose values are small cannot hide behind a
channel whose values are large.

* float32/float64, calibrated (the default when the original's noise was measured):
  the original runs a second time on the same session with every input and every
  arithmetic constant (weights, biases, BN statistics) nudged by one rounding step,
  ±ε relative, signs drawn at random (equivalence.py). That run's deviation n_c from
  the original, per channel, is the rounding noise the computation itself shows at
  that value: it grows with depth, with cancellation (a near-dead channel whose
  terms are large) and with a Sigmoid's absolute precision, exactly as a correct
  fold's rounding does. Channel c passes when
      max|a − b| ≤ NOISE_FACTOR·n_c + ULPS·ε·max|a_c| + atol + rtol·G
  with G the largest |a| of the whole value and rtol/atol the user's (0 by default).
  A channel that is a poor sample of its own noise takes the median channel's noise
  when that is larger: one of fewer than POOL_BELOW values, and a dead channel (one
  value throughout), where the nudges of its few constants can cancel exactly (four
  BN parameters, each moving the result by one ulp of the same intermediate, sum to
  zero with probability 3/8: mnasnet's dynamo export had such a false alarm). A fold wrong by 0.1% in one
  channel is ~1e-3·max|a_c|, far above 8·ε·max|a_c| ≈ 1e-6·max|a_c|, so it fails
  unless the computation's own noise is that large there.
  A channel must also not have moved as a whole: its mean deviation is held to what
  rounding gives a mean (systematic.py), which catches a wrong bias where a deep net's
  noise hides it from the largest deviation. The smallest atol that would have passed
  is reported (`needed_atol`), with the noise it was judged against.
* float32/float64, fixed (no noise measured: the float32 stand-in, or the noise run
  failed): channel c passes when its error is within both atol + rtol·G and
  atol + CHANNEL_FACTOR·rtol·max|a_c| (1% of the channel's own values in float32).
* float16/bfloat16 with r, a float32 run of the original: the folded model must be
  about as close to r as the original is: max|b − r| ≤ 2·max|a − r| + atol + rtol·max|r|.
  So is a float32 value computed from a half-precision value a fold changed: the fold
  moved half-precision rounding, and the float32 value carries it.
* integers and bools must be equal.
* NaN and ±Inf must sit at the same positions in both.

A value is *informative* when it holds evidence: not all NaN/Inf, and not the same
for two different input draws (a value that ignores the input cannot tell a right
fold from a wrong one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bnfold.check.systematic import shifts
from bnfold.errors import InputError
from bnfold.report import OutputCheck

# (rtol, atol) by the value's dtype; "direct" = the folded model compared with the original itself.
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
HALF_DTYPES = frozenset(DIRECT_HALF_TOLERANCES)
NOISE_FACTOR = 8.0  # the folded model may deviate this many times the original's own noise
ULPS = 8.0  # and this many rounding steps of the channel's own largest value
POOL_BELOW = 32  # values per channel below which a channel also takes the median channel's noise
CHANNEL_FACTOR = 1000.0  # the per-channel bound, in units of rtol of the channel's own largest value
CHANNEL_RTOL_CAP = 0.1


@dataclass(frozen=True)
class Tolerance:
    """The user's --rtol/--atol (None: by dtype)."""

    rtol: float | None = None
    atol: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("rtol", self.rtol), ("atol", self.atol)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0, not {value}")

    def pick(self, table: Mapping[str, tuple[float, float]], dtype_name: str) -> tuple[float, float]:
        default_rtol, default_atol = table.get(dtype_name, (0.0, 0.0))
        return (default_rtol if self.rtol is None else self.rtol, default_atol if self.atol is None else self.atol)


def compare_value(*args, **kwargs) -> OutputCheck:
    """`_compare_value`, with numpy's floating-point warnings off: overflow in a difference of huge values is a
    value the rule judges (an infinite error fails), not something to print."""
    with np.errstate(all="ignore"):
        return _compare_value(*args, **kwargs)


def _compare_value(
    name: str,
    expected,
    actual,
    tolerance: Tolerance = Tolerance(),
    reference=None,
    table: Mapping[str, tuple[float, float]] | None = None,
    inherits: str | None = None,
    noise=None,
) -> OutputCheck:
    """Compare one value; `expected` comes from the original, `reference` from its float32 run.

    `noise`: the original's run with inputs and constants nudged by one rounding step (the
    calibrated rule); without it, the fixed rule.

    `table`: the tolerances to use instead of the defaults (the float32 stand-in check).
    `inherits`: the half-precision type a float32/float64 value is computed from, when a fold
    changed half-precision arithmetic upstream of it (it is then judged by that type's rule).
    """
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape:
        mismatch = f"shape {actual.shape} instead of {expected.shape}"
        return OutputCheck(name, float("inf"), float("inf"), 0.0, False, mismatch)
    if expected.dtype.kind not in "fc":
        equal = bool(np.array_equal(expected, actual))
        error = 0.0 if equal else float("inf")
        return OutputCheck(name, error, error, 0.0, equal, None if equal else "values differ")
    dtype_name = expected.dtype.name
    a, b = _comparable(expected), _comparable(actual)
    special_equal, a, b = _split_specials(a, b)
    note: str | None = None if special_equal else "NaN/Inf positions differ"
    if reference is not None and table is None:
        judged_as: str | None = dtype_name if dtype_name in HALF_DTYPES else inherits
        if judged_as is not None:
            return _against_reference(name, judged_as, (a, b, np.asarray(reference)), tolerance, special_equal, note)
    if noise is not None and table is None and dtype_name in CALIBRATED_DTYPES and np.shape(noise) == a.shape:
        return _calibrated(name, (a, b, _comparable(np.asarray(noise))), tolerance, special_equal, note)
    table = table or (DIRECT_HALF_TOLERANCES if dtype_name in HALF_DTYPES else DEFAULT_TOLERANCES)
    rtol, atol = tolerance.pick(table, dtype_name)
    scale = _channel_magnitude(a)
    difference = np.subtract(a, b)
    channel_error = _channel_max(np.abs(difference, out=difference))
    channel_rtol = min(CHANNEL_FACTOR * rtol, max(CHANNEL_RTOL_CAP, rtol))
    allowed = atol + np.minimum(rtol * np.max(scale, initial=0.0), channel_rtol * scale)
    return _check(name, channel_error, scale, allowed, channel_error, special_equal, note)


CALIBRATED_DTYPES = frozenset({"float32", "float64"})


def _calibrated(
    name: str,
    values: tuple[np.ndarray, np.ndarray, np.ndarray],
    tolerance: Tolerance,
    special_equal: bool,
    note: str | None,
) -> OutputCheck:
    """The calibrated rule: the folded b against the original a, given the original's nudged run n."""
    a, b, nudged = values
    nudged = _split_specials(a, nudged)[2]  # NaN/Inf where the nudge moved them: no noise to measure there
    scale = _channel_magnitude(a)
    dead = _channel_max(a) == _channel_min(a)
    difference, nudge = np.subtract(b, a), np.subtract(nudged, a)
    error = _channel_magnitude(difference)
    noise = _pooled(a, _channel_magnitude(nudge), dead)
    rtol, atol = tolerance.rtol or 0.0, tolerance.atol or 0.0
    whole = float(np.max(scale, initial=0.0))
    ulp = float(np.finfo(a.dtype).eps)
    own = NOISE_FACTOR * noise + ULPS * ulp * scale
    allowed = own + atol + rtol * whole
    worst = _worst(error, allowed)
    needed = float(np.max(np.maximum(error - own - rtol * whole, 0.0), initial=0.0))
    checked = _check(name, error, scale, allowed, error, special_equal, note)
    shift, shift_allowed = shifts(difference, nudge, scale, dead, atol + rtol * whole)
    needed = max(needed, float(np.max(np.maximum(shift - shift_allowed + atol, 0.0), initial=0.0)))
    checked = checked.with_context(noise=float(noise[worst]) if noise.size else 0.0, needed_atol=needed)
    moved = _worst(shift, shift_allowed)
    if not checked.passed or shift.size == 0 or shift[moved] <= shift_allowed[moved]:
        return checked
    channel = moved if error.size > 1 else None
    shifted = f"its values moved together by {shift[moved]:.3e} on average; rounding allows {shift_allowed[moved]:.3e}"
    return checked.with_context(passed=False, channel=channel, tolerance=float(shift_allowed[moved]), note=shifted)


def _pooled(a: np.ndarray, noise: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Each channel's noise; a channel that is a poor sample of its own (fewer than POOL_BELOW values, or one
    value throughout: a dead channel, where a few nudges of its constants can cancel exactly) takes the median
    channel's noise when that is larger."""
    if not noise.size:
        return noise
    few = a.ndim >= 2 and a.size // max(a.shape[1], 1) < POOL_BELOW
    poor = np.ones_like(noise, dtype=bool) if few else dead
    return np.where(poor, np.maximum(noise, np.median(noise)), noise)


def _against_reference(
    name: str,
    judged_as: str,
    values: tuple[np.ndarray, np.ndarray, np.ndarray],
    tolerance: Tolerance,
    special_equal: bool,
    note: str | None,
) -> OutputCheck:
    """The half-precision rule (of `judged_as`) for the original a and folded b against the float32 run r."""
    a, b, r = values
    r = _comparable(r)
    r = np.where(np.isfinite(r), r, 0)
    original_error = _channel_max(np.abs(a - r))
    rtol, atol = tolerance.pick(DEFAULT_TOLERANCES, judged_as)
    folded_error = _channel_max(np.abs(b - r))
    allowed = 2 * original_error + atol + rtol * _channel_max(np.abs(r))
    worst = _worst(folded_error, allowed)
    note = note or (
        f"vs float32 run of the original: folded {folded_error[worst]:.3e}, original {original_error[worst]:.3e}"
    )
    error = _channel_max(np.abs(a - b))
    return _check(name, error, _channel_max(np.abs(a)), allowed, folded_error, special_equal, note)


def _check(
    name: str,
    error: np.ndarray,
    scale: np.ndarray,
    allowed: np.ndarray,
    judged: np.ndarray,
    special_equal: bool,
    note: str | None,
) -> OutputCheck:
    """The result from per-channel arrays: `judged` (the error held to the rule) against `allowed`."""
    worst = _worst(judged, allowed)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(scale > 0, error / np.where(scale > 0, scale, 1), np.where(error > 0, np.inf, 0.0))
    passed = special_equal and bool(np.all(judged <= allowed))
    channel = worst if error.size > 1 else None
    largest, whole = float(np.max(error, initial=0.0)), float(np.max(scale, initial=0.0))
    value_relative = largest / whole if whole > 0 else (0.0 if largest == 0 else float("inf"))
    return OutputCheck(
        name,
        largest,
        float(np.max(relative, initial=0.0)),
        float(allowed[worst]) if allowed.size else 0.0,
        passed,
        note,
        channel=channel,
        value_rel_err=value_relative,
    )


def _comparable(array: np.ndarray) -> np.ndarray:
    """Half precision widened to float32 (exact), so the arithmetic below is not itself half precision."""
    return array.astype(np.float32) if array.dtype.itemsize < 4 else array


def _split_specials(a: np.ndarray, b: np.ndarray) -> tuple[bool, np.ndarray, np.ndarray]:
    """Whether NaN/±Inf sit at the same positions, and both arrays with them replaced by 0."""
    if a.size and np.isfinite(np.max(a) - np.min(a) + np.max(b) - np.min(b)):
        return True, a, b  # four reductions, no temporary: the common case of finite values
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    if finite_a.all() and finite_b.all():
        return True, a, b
    same = np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        np.where(np.isinf(a), a, 0), np.where(np.isinf(b), b, 0)
    )
    return same, np.where(finite_a, a, 0), np.where(finite_b, b, 0)


def _channel_magnitude(values: np.ndarray) -> np.ndarray:
    """max|values| per channel, without a temporary array of |values|."""
    return np.maximum(_channel_max(values), -_channel_min(values))


def _channel_min(values: np.ndarray) -> np.ndarray:
    if values.ndim < 2:
        return np.array([np.min(values, initial=0.0)], dtype=np.float64)
    if values.size == 0:
        return np.zeros(values.shape[1], dtype=np.float64)
    return np.min(values, axis=tuple(axis for axis in range(values.ndim) if axis != 1)).astype(np.float64)


def _channel_max(values: np.ndarray) -> np.ndarray:
    """max over everything but axis 1 (the channel axis), in float64: one number per channel."""
    if values.ndim < 2:
        return np.array([np.max(values, initial=0.0)], dtype=np.float64)
    axes = tuple(axis for axis in range(values.ndim) if axis != 1)
    if values.size == 0:
        return np.zeros(values.shape[1], dtype=np.float64)
    return np.max(values, axis=axes).astype(np.float64)


def _worst(error: np.ndarray, allowed: np.ndarray) -> int:
    """The channel whose error is largest against what it is allowed."""
    if error.size == 0:
        return 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(allowed > 0, error / np.where(allowed > 0, allowed, 1), np.where(error > 0, np.inf, 0.0))
    return int(np.argmax(ratio))


def informative(first, second=None) -> bool:
    """Whether a value holds evidence: not all NaN/Inf, and (given a second draw) not identical in both."""
    first = np.asarray(first)
    if first.dtype.kind in "fc" and first.size and not np.isfinite(first).any():
        return False
    if second is None:
        return True
    second = np.asarray(second)
    if first.shape != second.shape:
        return True
    sample = slice(None, None, 97)  # most values differ at once: a sparse sample usually settles it
    if not np.array_equal(first.reshape(-1)[sample], second.reshape(-1)[sample], equal_nan=first.dtype.kind in "fc"):
        return True
    return not np.array_equal(first, second, equal_nan=first.dtype.kind in "fc")
