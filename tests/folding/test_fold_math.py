"""The folding arithmetic against a direct computation of BN after the producer, in float64."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfold.folding import fold_math


def batch_norm(y, gamma, beta, mean, var, eps):
    shape = (1, -1) + (1,) * (y.ndim - 2)
    return gamma.reshape(shape) * (y - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) + beta.reshape(shape)


def conv(x, w, b, group):
    """Grouped N-D convolution, stride 1, no padding. x [N, Cin, *S], w [Cout, Cin/g, *K]."""
    spatial = x.ndim - 2
    kernel = w.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=tuple(range(2, 2 + spatial)))
    n, cin = x.shape[:2]
    out_spatial = windows.shape[2 : 2 + spatial]
    windows = windows.reshape((n, group, cin // group, *out_spatial, *kernel))
    grouped_w = w.reshape((group, w.shape[0] // group, cin // group, *kernel))
    letters = "defhij"[:spatial]
    kernel_letters = "klmpqr"[:spatial]
    y = np.einsum(f"ngc{letters}{kernel_letters},goc{kernel_letters}->ngo{letters}", windows, grouped_w)
    y = y.reshape((n, w.shape[0], *out_spatial))
    return y if b is None else y + b.reshape((1, -1) + (1,) * spatial)


def conv_transpose(x, w, b, group):
    """Grouped N-D transposed convolution, stride 1, no padding. w [Cin, Cout/g, *K]."""
    n, cin = x.shape[:2]
    cout_g, kernel = w.shape[1], w.shape[2:]
    out_shape = tuple(s + k - 1 for s, k in zip(x.shape[2:], kernel, strict=True))
    y = np.zeros((n, cout_g * group, *out_shape))
    cin_g = cin // group
    for gi in range(group):
        xs = x[:, gi * cin_g : (gi + 1) * cin_g]
        ws = w[gi * cin_g : (gi + 1) * cin_g]
        for k in np.ndindex(*kernel):
            contribution = np.einsum("nc...,cj->nj...", xs, ws[(slice(None), slice(None), *k)])
            region = tuple(slice(ki, ki + s) for ki, s in zip(k, x.shape[2:], strict=True))
            y[(slice(None), slice(gi * cout_g, (gi + 1) * cout_g), *region)] += contribution
    return y if b is None else y + b.reshape((1, -1) + (1,) * len(kernel))


def random_bn(rng, channels):
    return (
        rng.uniform(0.5, 1.5, channels),
        rng.normal(0, 1, channels),
        rng.normal(0, 1, channels),
        rng.uniform(0.1, 2, channels),
        1e-3,
    )


def test_scale_shift_matches_definition():
    gamma, beta, mean, var = np.array([2.0]), np.array([0.5]), np.array([1.0]), np.array([3.0])
    s, t = fold_math.bn_scale_shift(gamma, beta, mean, var, 1.0)
    assert s[0] == pytest.approx(1.0) and t[0] == pytest.approx(-0.5)


def test_epsilon_sits_inside_the_square_root():
    s, _t = fold_math.bn_scale_shift(np.ones(1), np.zeros(1), np.zeros(1), np.ones(1), 1e-3)
    assert s[0] == pytest.approx(1 / np.sqrt(1.001)) and s[0] == pytest.approx(0.9995004, abs=1e-7)


@settings(max_examples=40, deadline=None)
@given(
    spatial=st.integers(1, 3),
    group=st.sampled_from([1, 2, 4]),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv_fold_equals_bn_after_conv(spatial, group, per_group_in, per_group_out, bias, seed):
    rng = np.random.default_rng(seed)
    cin, cout = group * per_group_in, group * per_group_out
    x = rng.normal(size=(2, cin, *(4,) * spatial))
    w = rng.normal(size=(cout, per_group_in, *(2,) * spatial))
    b = rng.normal(size=cout) if bias else None
    gamma, beta, mean, var, eps = random_bn(rng, cout)
    s, t = fold_math.bn_scale_shift(gamma, beta, mean, var, eps)
    w2, b2 = fold_math.fold_output_channels(w, b, s, t)
    expected = batch_norm(conv(x, w, b, group), gamma, beta, mean, var, eps)
    np.testing.assert_allclose(conv(x, w2, b2, group), expected, rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    spatial=st.integers(1, 2),
    group=st.sampled_from([1, 2, 3]),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv_transpose_fold_equals_bn_after_conv_transpose(spatial, group, per_group_in, per_group_out, bias, seed):
    rng = np.random.default_rng(seed)
    cin, cout = group * per_group_in, group * per_group_out
    x = rng.normal(size=(2, cin, *(3,) * spatial))
    w = rng.normal(size=(cin, per_group_out, *(2,) * spatial))
    b = rng.normal(size=cout) if bias else None
    gamma, beta, mean, var, eps = random_bn(rng, cout)
    s, t = fold_math.bn_scale_shift(gamma, beta, mean, var, eps)
    w2, b2 = fold_math.fold_conv_transpose(w, b, s, t, group)
    expected = batch_norm(conv_transpose(x, w, b, group), gamma, beta, mean, var, eps)
    np.testing.assert_allclose(conv_transpose(x, w2, b2, group), expected, rtol=1e-10, atol=1e-10)


def test_conv_transpose_groups_scale_the_right_slice():
    """With g = 2, Cin = 2, Cout = 2: W[0, 0] makes channel 0 and W[1, 0] makes channel 1."""
    w = np.ones((2, 1, 1))
    scaled = fold_math.conv_transpose_weight_scale(w, np.array([2.0, 3.0]), group=2)
    assert scaled[:, 0, 0].tolist() == [2.0, 3.0]


C_SHAPES = [None, (5,), (1, 5), (), (1,), (4, 5), (4, 1)]


@pytest.mark.parametrize("c_shape", C_SHAPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0), (-1.5, 0.0)])
def test_gemm_fold_equals_bn_after_gemm(c_shape, trans_a, trans_b, alpha, beta):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 4) if trans_a else (4, 3))
    b = rng.normal(size=(5, 3) if trans_b else (3, 5))
    c = None if c_shape is None else rng.normal(size=c_shape)
    gamma, beta_bn, mean, var, eps = random_bn(rng, 5)

    def gemm(b_matrix, c_bias, beta_value):
        product = alpha * (a.T if trans_a else a) @ (b_matrix.T if trans_b else b_matrix)
        return product if c_bias is None else product + beta_value * c_bias

    s, t = fold_math.bn_scale_shift(gamma, beta_bn, mean, var, eps)
    b2, c2 = fold_math.fold_gemm(b, c, s, t, trans_b=trans_b, beta=beta)
    expected = batch_norm(gemm(b, c, beta), gamma, beta_bn, mean, var, eps)
    np.testing.assert_allclose(gemm(b2, c2, 1.0), expected, rtol=1e-10, atol=1e-10)


def test_round_to_rounds_once_and_refuses_overflow():
    assert fold_math.round_to(np.array([1.0 / 3]), np.float16).dtype == np.float16
    with pytest.raises(fold_math.FoldOverflowError, match="float16"):
        fold_math.round_to(np.array([1e6]), np.float16)


def test_float64_then_round_beats_rounding_every_step():
    """The reason for float64 inside: on a tiny-variance channel fp16 arithmetic drifts."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 16)).astype(np.float16)
    gamma, var = np.float16(1.3), np.float16(1e-4)
    exact = w.astype(np.float64) * (1.3 / np.sqrt(1e-4 + 1e-5))
    s64, _ = fold_math.bn_scale_shift(gamma, 0.0, 0.0, var, 1e-5)
    ours = fold_math.round_to(w.astype(np.float64) * s64, np.float16)
    naive = w * (gamma / np.sqrt(var + np.float16(1e-5)))
    assert np.abs(ours - exact).max() <= np.abs(naive.astype(np.float64) - exact).max()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(
    ("shape", "factor_shape"),
    [((300, 70, 3, 3), (300, 1, 1, 1)), ((5, 40000), (1, 40000)), ((70000,), (1,)), ((3, 0, 2), (3, 1, 1))],
)
def test_blocked_products_equal_the_whole_product_rounded_once(dtype, shape, factor_shape):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=shape).astype(dtype)
    factors = rng.uniform(0.5, 1.5, factor_shape)
    expected = fold_math.round_to(np.multiply(weight, factors, dtype=np.float64), dtype)
    result = fold_math.scaled(weight, factors, dtype)
    assert result.dtype == dtype and result.shape == expected.shape
    np.testing.assert_array_equal(result, expected)


def test_a_blocked_product_that_overflows_is_refused():
    weight = np.full((200000,), 30000, np.float16)
    weight[-1] = 60000  # in the last block
    with pytest.raises(fold_math.FoldOverflowError, match="overflow float16"):
        fold_math.scaled(weight, np.array([2.0]), np.float16)


def test_weighted_sum_matches_the_float64_product():
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(70000, 3)).astype(np.float32)
    vector = rng.normal(size=70000)
    np.testing.assert_allclose(
        fold_math.weighted_sum(matrix, vector, axis=0), vector @ matrix.astype(np.float64), rtol=1e-12
    )
    np.testing.assert_allclose(
        fold_math.weighted_sum(matrix.T, vector, axis=1), vector @ matrix.astype(np.float64), rtol=1e-12
    )
