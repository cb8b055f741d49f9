"""Folding arithmetic as small pure functions.

Every function takes numpy arrays, computes in float64 and leaves the rounding to
the caller's dtype to `round_to`, so each folded value is rounded exactly once.

Notation (per channel c):  s = γ / sqrt(σ² + ε),  t = β − μ·s,  so BN(x) = s·x + t.
"""

from __future__ import annotations

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


def round_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round float64 `values` once to `dtype`; refuse values the dtype cannot hold."""
    with np.errstate(over="ignore"):  # overflow is detected and reported below
        rounded = np.asarray(values).astype(dtype)
    if np.isfinite(rounded).all():  # the common case: one pass over the narrow result
        return rounded
    if (np.isfinite(rounded) != np.isfinite(values)).any():
        raise FoldOverflowError(f"folded values overflow {np.dtype(dtype).name}")
    return rounded


def _per_axis(vector: np.ndarray, rank: int, axis: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = -1
    return vector.reshape(shape)


def fold_output_channels(weight, bias, scale, shift, *, channel_axis: int = 0):
    """Conv-style fold: output channel o of `weight` lies on `channel_axis`.

    Returns (W', b') with W'[o] = W[o]·s[o] and b' = b·s + t (b = 0 when absent).
    """
    return scale_output_channels(weight, scale, channel_axis=channel_axis), output_bias(bias, scale, shift)


def scale_output_channels(weight, scale, *, channel_axis: int = 0) -> np.ndarray:
    """W'[o] = W[o]·s[o], o on `channel_axis`."""
    # The float64 scale promotes each product to float64 inside the ufunc: no float64 copy of W.
    return np.multiply(weight, _per_axis(_f64(scale), np.ndim(weight), channel_axis), dtype=np.float64)


def output_bias(bias, scale, shift) -> np.ndarray:
    """b' = b·s + t, the bias of a producer whose output channels were scaled by s (b = 0 when absent)."""
    bias64 = np.zeros_like(_f64(scale)) if bias is None else _f64(bias)
    return bias64 * scale + shift


def conv_transpose_weight_scale(weight, scale, group: int) -> np.ndarray:
    """ConvTranspose weight [Cin, Cout/g, k…]: output channel o = gi·(Cout/g) + j.

    Scales W[gi·(Cin/g):(gi+1)·(Cin/g), j] by s[o].
    """
    weight64 = _f64(weight)
    cin, cout_per_group = weight64.shape[:2]
    kernel = weight64.shape[2:]
    grouped = weight64.reshape((group, cin // group, cout_per_group, *kernel))
    per_group_scale = scale.reshape((group, 1, cout_per_group) + (1,) * len(kernel))
    return (grouped * per_group_scale).reshape(weight64.shape)


def fold_conv_transpose(weight, bias, scale, shift, group: int):
    return conv_transpose_weight_scale(weight, scale, group), output_bias(bias, scale, shift)


def fold_gemm(b_matrix, c_bias, scale, shift, *, trans_b: bool, beta: float):
    """Gemm Y = α·A'·B' + β·C followed by BN over the N columns of Y.

    Column n of B' (row n of B when transB) is scaled by s[n]; the new C (used with
    β = 1) is β·C·s + t, with C broadcast against [N] first. α is unchanged.
    """
    new_b = scale_output_channels(b_matrix, scale, channel_axis=0 if trans_b else 1)
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


def fold_conv_input_channels(weight, bias, scale, shift, group: int, *, with_shift: bool = True):
    """BN before a Conv ("forward"): input channel c of X is scaled by s[c] and shifted by t[c].

    Weight [Cout, Cin/g, k…]; output o in group gi reads input channel gi·(Cin/g) + cl, so
    W'[o, cl] = W[o, cl]·s[gi·(Cin/g) + cl] and b'[o] = b[o] + Σ_{cl,k} W[o, cl, k]·t[gi·(Cin/g) + cl].
    Exact only when nothing pads the input with zeros (the shift would be padded too).
    """
    weight64 = _f64(weight)
    cout, cin_per_group = weight64.shape[:2]
    kernel = weight64.shape[2:]
    grouped = weight64.reshape((group, cout // group, cin_per_group, *kernel))
    per_input = (group, 1, cin_per_group) + (1,) * len(kernel)
    new_weight = (grouped * scale.reshape(per_input)).reshape(weight64.shape)
    bias64 = np.zeros(cout) if bias is None else _f64(bias)
    if with_shift:
        shift_terms = (grouped * shift.reshape(per_input)).reshape((cout, -1)).sum(axis=1)
        bias64 = bias64 + shift_terms
    return new_weight, bias64


def fold_gemm_input_columns(b_matrix, c_bias, scale, shift, *, trans_b: bool, alpha: float, beta: float):
    """BN on A's K columns before Gemm Y = α·A·B' + β·C ("forward"; transA = 0).

    A = X·diag(s) + 1·tᵀ, so B'' = diag(s)·B' (row k of B', column k of B when transB)
    and C' = β·C + α·tᵀ·B', used with β = 1.
    """
    b64 = _f64(b_matrix)
    b_prime = b64.T if trans_b else b64  # [K, N]
    new_b = b64 * (scale[None, :] if trans_b else scale[:, None])
    c64 = np.zeros(1) if c_bias is None else _f64(c_bias)
    return new_b, float(beta) * c64 + float(alpha) * (shift @ b_prime)
