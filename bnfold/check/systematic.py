"""The shift rule: a channel whose values all moved by about the same amount, more than rounding moves them.

A wrong fold of a bias (or of a BN's shift) moves every value of one channel by the
same δ. Where a deep net's own rounding noise is large, the largest deviation of such
a channel can stay inside what the calibrated rule allows (comparison.py), while its
*mean* deviation stands far outside what rounding gives a mean: rounding errors of
the N values of a channel mostly cancel in their mean, a shift does not. So channel
c, with d = b − a over its N values and m = n − a for the original's nudged run n, also
passes only when

    |mean(d)| ≤ OWN_FACTOR·|mean(m)| + SPREAD_FACTOR·sd(d)/√N + SHIFT_ULPS·ε·max|a_c| + atol + rtol·G

sd(d)/√N is the standard error of that mean were the fold's errors random; |mean(m)| is
the shift the original's own nudged constants (BN statistics, biases, each moved by one
rounding step) give, which a correct fold's once-rounded constants give too; the ulps
term is the shift rounding a folded weight can give for real (the weight's rounding
errors meet inputs of one sign; the nudged run leaves weights alone). On the correct
folds of 50 exports, trained and built models, the largest shift is 0.49 of this bound
(the trained PP-OCRv4 recognizer); a bias moved by 0.1% of its largest value reaches up
to 33 times it, and 96 of 100 such moves fail (93 with OWN_FACTOR 8, where correct
folds reached 0.41; 16 ulps instead of 32 would catch little more and reach 0.60).
A channel of fewer than SHIFT_BELOW values is no sample of its own mean (it keeps the
other rule alone), and a dead channel (one value throughout) takes the median
channel's bound when that is larger, as in comparison.py.
"""

from __future__ import annotations

import numpy as np

OWN_FACTOR = 2.0
SPREAD_FACTOR = 8.0
SHIFT_ULPS = 32.0
SHIFT_BELOW = 8


def shifts(
    difference: np.ndarray, nudge: np.ndarray, scale: np.ndarray, dead: np.ndarray, slack: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: (|mean(d)|, what it is allowed by the rule above) for d = `difference` (b − a) and
    m = `nudge` (n − a), given max|a| per channel (`scale`), its dead channels and `slack` = atol + rtol·G."""
    channels = scale.shape[0]
    count = difference.size // max(channels, 1)
    if count < SHIFT_BELOW:
        return np.zeros(channels), np.full(channels, np.inf)
    axes = tuple(axis for axis in range(difference.ndim) if axis != 1) if difference.ndim >= 2 else None
    # sums in the values' own type (numpy sums pairwise: exact enough for a mean, twice as fast as float64)
    mean = np.atleast_1d(difference.sum(axis=axes)).astype(np.float64) / count
    square = np.atleast_1d(np.square(difference).sum(axis=axes)).astype(np.float64) / count
    spread = np.sqrt(np.maximum(square - mean * mean, 0.0) / count)
    own = np.abs(np.atleast_1d(nudge.sum(axis=axes)).astype(np.float64) / count)
    ulp = float(np.finfo(difference.dtype).eps)
    allowed = OWN_FACTOR * own + SPREAD_FACTOR * spread + SHIFT_ULPS * ulp * scale + slack
    allowed = np.where(dead, np.maximum(allowed, np.median(allowed)), allowed)
    return np.abs(mean), allowed
