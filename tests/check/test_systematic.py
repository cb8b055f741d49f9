"""The shift rule (bnfold/check/systematic.py): a channel that moved as a whole fails, though its largest
deviation hides in the noise; rounding that averages out passes; a channel too small to tell keeps the other rule."""

from __future__ import annotations

import numpy as np
import pytest

from bnfold.check.comparison import compare_value
from bnfold.check.systematic import SHIFT_BELOW
from bnfold.check.systematic import shifts as _shifts

SHAPE = (2, 4, 7, 7)  # 98 values a channel, as a deep stage of a ResNet at 224×224 with two draws


def shifts(a, b, nudged, slack):
    """The rule on the arrays themselves (the comparison hands it differences and per-channel facts)."""
    axes = tuple(axis for axis in range(a.ndim) if axis != 1)
    largest = np.abs(a).max(axis=axes).astype(np.float64)
    dead = a.max(axis=axes) == a.min(axis=axes)
    return _shifts(b - a, nudged - a, largest, dead, slack)


def _noisy(seed: int, sigma: float = 1e-4):
    """A value a, the original's nudged run n, and a correctly folded b: both off by random noise of `sigma`."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-40, 40, SHAPE).astype(np.float32)
    nudged = (a + rng.normal(0, sigma, SHAPE)).astype(np.float32)
    folded = (a + rng.normal(0, sigma, SHAPE)).astype(np.float32)
    return a, nudged, folded


@pytest.mark.parametrize("seed", range(5))
def test_a_bias_moved_by_less_than_the_noise_fails_where_the_largest_deviation_passes(seed):
    a, nudged, folded = _noisy(seed)
    moved = folded.copy()
    moved[:, 2] += np.float32(6e-4)  # six times the noise's spread: inside 8× its largest deviation
    largest_only = np.abs(moved - a).max()
    assert largest_only < 8 * np.abs(nudged - a).max()
    result = compare_value("v", a, moved, noise=nudged)
    assert not result.passed and result.channel == 2
    assert "moved together" in result.note and result.needed_atol > 0


@pytest.mark.parametrize("seed", range(5))
def test_a_correct_fold_whose_rounding_averages_out_passes(seed):
    a, nudged, folded = _noisy(seed)
    result = compare_value("v", a, folded, noise=nudged)
    assert result.passed, result
    shift, allowed = shifts(a, folded, nudged, 0.0)
    assert np.all(shift < 0.5 * allowed)


def test_rounding_of_a_folded_weight_that_moves_a_channel_by_a_few_ulps_passes():
    """Weight rounding meeting inputs of one sign does move a channel's mean: a few rounding steps of it."""
    a, nudged, _ = _noisy(0, sigma=0.0)
    folded = a + np.float32(4 * np.finfo(np.float32).eps) * np.abs(a).max(axis=(0, 2, 3), keepdims=True)
    assert compare_value("v", a, folded.astype(np.float32), noise=nudged).passed


def test_a_channel_of_few_values_is_judged_by_its_largest_deviation_alone():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (SHIFT_BELOW - 1, 3)).astype(np.float32)  # rank 2: each channel has 7 values
    _, allowed = shifts(a, a + np.float32(1e-3), a, 0.0)
    assert np.all(np.isinf(allowed))


def test_a_dead_channel_takes_the_median_channels_bound():
    a, nudged, folded = _noisy(1)
    a[:, 3] = nudged[:, 3] = 0.25  # one value throughout: its own spread says nothing
    folded[:, 3] = np.float32(0.25) + np.float32(2e-6)
    result = compare_value("v", a, folded, noise=nudged)
    assert result.passed, result
