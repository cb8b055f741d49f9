"""Folding arithmetic as small pure functions.

Every function takes numpy arrays and computes in float64. A folded weight is
rounded exactly once: by `round_to`, or, when the weight function is given the
`dtype` to round to, block by block as it is computed (`scaled`), so that a large
weight never exists as a whole in float64 (a 100 MB weight would need 200 MB more).

Notation (per channel c):  s = γ / sqrt(σ² + ε),  t = β − μ·s,  so BN(x) = s·x + t.
"""

from __future__ import annotations

import math

import numpy as np


class FoldOverflowError(ValueError):
    """A folded value does not fit the target dtype (e.g. float16 overflow)."""


def _f64(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def bn_scale_shift(gamma, beta, mean, var, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel affine map (s, t) that inference-mode BN applies."""
    denominator = np.sqrt(_f64(var) + float(epsilon))
    scale = _f64(gamma) / denominator
    shift = _f64(beta) - _f64(mean) * scale
    return scale, shift


def bn_parameters(scale, shift, epsilon: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(γ, β, μ, σ²) for which BatchNormalization with this ε computes exactly y = s·x + t.

    μ = 0, σ² = 1, γ = s·√(1 + ε), β = t. ε stays the node's own rather than 0: some
    runtimes raise a small ε to their minimum (cuDNN), which would then change the scale.
    """
    scale64, shift64 = _f64(scale), _f64(shift)
    gamma = scale64 * np.sqrt(1.0 + float(epsilon))
    return gamma, shift64, np.zeros_like(scale64), np.ones_like(scale64)


# float32/float64 weights folded to within this factor of the type's largest value are refused: the layer's sums
# of their products overflow where the original's smaller products, scaled afterwards, did not.
HEADROOM = 2.0**16


def round_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round float64 `values` once to `dtype`; refuse values the dtype cannot hold (float32/float64: with
    HEADROOM to spare)."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected and reported below
        rounded = np.asarray(values).astype(dtype, copy=False)  # already `dtype`: rounded already
    if not rounded.size or rounded.dtype.kind != "f":
        return rounded
    wide = rounded.dtype in (np.float32, np.float64)
    limit = float(np.finfo(rounded.dtype).max) / HEADROOM if wide else math.inf
    largest = max(abs(float(rounded.max())), abs(float(rounded.min())))  # two passes, no temporary
    if math.isfinite(largest) and largest <= limit:  # the common case
        return rounded
    finite = np.isfinite(rounded)
    if (finite != np.isfinite(values)).any():
        raise FoldOverflowError(f"folded values overflow {np.dtype(dtype).name}")
    largest = float(np.max(np.abs(rounded[finite]), initial=0.0))
    if largest > limit:
        raise FoldOverflowError(f"folded values reach {largest:.3g}, too close to {rounded.dtype.name}'s largest")
    return rounded


# Products are computed this many elements at a time (512 KiB of float64: they stay in the cache).
_BLOCK_ELEMENTS = 1 << 16


def scaled(weight, factors, dtype=None) -> np.ndarray:
    """weight · factors (broadcast to the weight's shape), every product in float64.

    Returned in float64, or rounded once to `dtype`, block by block along axis 0.
    """
    factors = _f64(factors)
    if dtype is None:
        # The float64 factors promote each product inside the ufunc: no float64 copy of the weight.
        return np.multiply(weight, factors, dtype=np.float64)
    weight = np.asarray(weight)
    if weight.size <= _BLOCK_ELEMENTS and factors.ndim <= weight.ndim:  # one block: no loop, no slicing
        return round_to(np.multiply(weight, factors, dtype=np.float64), dtype)
    out = np.empty(np.broadcast_shapes(weight.shape, factors.shape), dtype=dtype)
    if out.size == 0:
        return out
    per_row = max(1, out[0].size if out.ndim else 1)
    rows = max(1, _BLOCK_ELEMENTS // per_row)
    per_row_factors = factors.ndim == out.ndim and factors.shape[0] == out.shape[0] and out.shape[0] > 1
    for start in range(0, out.shape[0] if out.ndim else 1, rows):
        block = slice(start, start + rows)
        product = np.multiply(weight[block], factors[block] if per_row_factors else factors, dtype=np.float64)
        out[block] = round_to(product, dtype)
    return out


def weighted_sum(weight, vector, axis: int) -> np.ndarray:
    """Σ over `axis` of weight · vector (vector along `axis`), in float64, other axes kept; block by block."""
    weight = np.moveaxis(np.asarray(weight), axis, 0)
    vector = _f64(vector)
    total = np.zeros(weight.shape[1:], dtype=np.float64)
    rows = max(1, _BLOCK_ELEMENTS // max(1, weight[0].size))
    for start in range(0, weight.shape[0], rows):
        block = weight[start : start + rows]
        total += np.tensordot(vector[start : start + rows], block.astype(np.float64), axes=(0, 0))
    return total


def _per_axis(vector: np.ndarray, rank: int, axis: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = -1
    return vector.reshape(shape)


def fold_output_channels(weight, bias, scale, shift, *, channel_axis: int = 0, dtype=None):
    """Conv-style fold: output channel o of `weight` lies on `channel_axis`.

    Returns (W', b') with W'[o] = W[o]·s[o] and b' = b·s + t (b = 0 when absent);
    W' rounded to `dtype` when given (see `scaled`), b' in float64.
    """
    weight_out = scale_output_channels(weight, scale, channel_axis=channel_axis, dtype=dtype)
    return weight_out, output_bias(bias, scale, shift)


def scale_output_channels(weight, scale, *, channel_axis: int = 0, dtype=None) -> np.ndarray:
    """W'[o] = W[o]·s[o], o on `channel_axis`."""
    return scaled(weight, _per_axis(_f64(scale), np.ndim(weight), channel_axis), dtype)


def output_bias(bias, scale, shift) -> np.ndarray:
    """b' = b·s + t, the bias of a producer whose output channels were scaled by s (b = 0 when absent)."""
    bias64 = np.zeros_like(_f64(scale)) if bias is None else _f64(bias)
    return bias64 * scale + shift


def conv_transpose_weight_scale(weight, scale, group: int, dtype=None) -> np.ndarray:
    """ConvTranspose weight [Cin, Cout/g, k…]: output channel o = gi·(Cout/g) + j.

    Scales W[gi·(Cin/g):(gi+1)·(Cin/g), j] by s[o].
    """
    cin, cout_per_group = np.shape(weight)[:2]
    # factors[i, j] = s[gi·(Cout/g) + j] for the input channels i of group gi
    factors = np.repeat(_f64(scale).reshape(group, cout_per_group), cin // group, axis=0)
    return scaled(weight, factors.reshape(factors.shape + (1,) * (np.ndim(weight) - 2)), dtype)


def fold_conv_transpose(weight, bias, scale, shift, group: int, dtype=None):
    return conv_transpose_weight_scale(weight, scale, group, dtype), output_bias(bias, scale, shift)


def fold_gemm(b_matrix, c_bias, scale, shift, *, trans_b: bool, beta: float, dtype=None):
    """Gemm Y = α·A'·B' + β·C followed by BN over the N columns of Y.

    Column n of B' (row n of B when transB) is scaled by s[n]; the new C (used with
    β = 1) is β·C·s + t, with C broadcast against [N] first. α is unchanged.
    """
    new_b = scale_output_channels(b_matrix, scale, channel_axis=0 if trans_b else 1, dtype=dtype)
    return new_b, gemm_output_bias(c_bias, scale, shift, beta=beta)


def gemm_output_bias(c_bias, scale, shift, *, beta: float) -> np.ndarray:
    c64 = np.zeros(1) if c_bias is None else _f64(c_bias)
    return float(beta) * c64 * scale + shift


def product_fits(array: np.ndarray, factors: np.ndarray, dtype) -> bool:
    """True when no element of `array` times any of `factors` can overflow `dtype` (a cheap bound).

    Reads `array` twice and allocates nothing its size: this is how a large fold is
    known to be safe before it is computed. False means "compute it and see".
    """
    try:
        limit = float(np.finfo(dtype).max)
    except (TypeError, ValueError):
        return False
    if array.size == 0 or np.size(factors) == 0:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        largest = max(abs(float(np.max(array))), abs(float(np.min(array)))) * float(np.max(np.abs(factors)))
    # The margin covers the float64 rounding of the bound itself; at most `limit` rounds to a finite value.
    return bool(np.isfinite(largest)) and largest <= limit * (1 - 2.0**-40)


def per_channel_broadcast(vector: np.ndarray, rank: int) -> np.ndarray:
    """Shape a per-channel vector [C] as [C, 1, …, 1] to broadcast on axis 1 of a rank-`rank` tensor."""
    return vector.reshape((vector.shape[0],) + (1,) * (rank - 2))


def _per_input_channel(vector, cout: int, cin_per_group: int, group: int) -> np.ndarray:
    """[Cout, Cin/g]: entry (o, cl) is vector[gi·(Cin/g) + cl], gi = o // (Cout/g) the group of output o."""
    return np.repeat(_f64(vector).reshape(group, cin_per_group), cout // group, axis=0)


def fold_conv_input_channels(weight, bias, scale, shift, group: int, *, with_shift: bool = True, dtype=None):
    """BN before a Conv ("forward"): input channel c of X is scaled by s[c] and shifted by t[c].

    Weight [Cout, Cin/g, k…]; output o in group gi reads input channel gi·(Cin/g) + cl, so
    W'[o, cl] = W[o, cl]·s[gi·(Cin/g) + cl] and b'[o] = b[o] + Σ_{cl,k} W[o, cl, k]·t[gi·(Cin/g) + cl].
    Exact only when nothing pads the input with zeros (the shift would be padded too).
    """
    cout, cin_per_group = np.shape(weight)[:2]
    kernel = (1,) * (np.ndim(weight) - 2)
    factors = _per_input_channel(scale, cout, cin_per_group, group)
    new_weight = scaled(weight, factors.reshape(factors.shape + kernel), dtype)
    bias64 = np.zeros(cout) if bias is None else _f64(bias)
    if with_shift:
        # Σ_k W[o, cl, k] first (float64 accumulation, no float64 copy of W), then Σ_cl … · t
        per_input_sums = np.sum(weight, axis=tuple(range(2, np.ndim(weight))), dtype=np.float64)
        bias64 = bias64 + np.sum(per_input_sums * _per_input_channel(shift, cout, cin_per_group, group), axis=1)
    return new_weight, bias64


def fold_gemm_input_columns(b_matrix, c_bias, scale, shift, *, trans_b: bool, alpha: float, beta: float, dtype=None):
    """BN on A's K columns before Gemm Y = α·A·B' + β·C ("forward"; transA = 0).

    A = X·diag(s) + 1·tᵀ, so B'' = diag(s)·B' (row k of B', column k of B when transB)
    and C' = β·C + α·tᵀ·B', used with β = 1.
    """
    scale = _f64(scale)
    new_b = scaled(b_matrix, scale[None, :] if trans_b else scale[:, None], dtype)
    c64 = np.zeros(1) if c_bias is None else _f64(c_bias)
    return new_b, float(beta) * c64 + float(alpha) * weighted_sum(b_matrix, shift, axis=1 if trans_b else 0)


def merged_kernel(shape: tuple[int, ...], placed, identities=()) -> np.ndarray:
    """Σ of kernels placed in a zero kernel of `shape` [Cout, Cin/g, k…], in float64.

    `placed`: (kernel, offset) pairs, each kernel added at spatial `offset`. `identities`:
    (scale, offset) pairs: s[c] added at tap (c, c mod Cin/g, offset…), the kernel of
    y[c] = s[c]·x[c] for a grouped Conv with Cout = Cin.
    """
    total = np.zeros(shape, dtype=np.float64)
    for kernel, offset in placed:
        window = tuple(slice(start, start + size) for start, size in zip(offset, np.shape(kernel)[2:], strict=True))
        index = (slice(None), slice(None), *window)
        total[index] += _f64(kernel)
    channels = np.arange(shape[0])
    for scale, offset in identities:
        taps = (channels, channels % shape[1], *offset)
        total[taps] += _f64(scale)
    return total
