"""Folding forward: an affine map (BN, or its Mul/Add kin) before a Conv, Gemm or MatMul.

Conv, input X [N, Cin, …], weight [Cout, Cin/g, k…]:
    Conv(s·X + t) = Conv'(X) with W'[o, cl] = W[o, cl]·s[c] and b'[o] = b[o] + Σ_{cl,k} W[o, cl, k]·t[c],
    c = gi·(Cin/g) + cl the input channel that output o (in group gi) reads through cl.
    Exact only when nothing pads X with zeros: a padded position would see 0, not t.
    A pure scale (t = 0) commutes with zero padding, so it folds into any Conv.

Gemm Y = α·A·B' + β·C with A = s·X + t over A's K columns (transA = 0):
    B'' = diag(s)·B' and C' = β·C + α·tᵀ·B', with β = 1.
    With transA = 1 the channel would index the output's rows: not foldable into B.

MatMul (rank-2 X, constant 2-D B): becomes Gemm(X, diag(s)·B, tᵀ·B).
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.folding import fold_math
from bnfold.folding.affine import AffineParams
from bnfold.folding.context import FoldContext
from bnfold.folding.rules.base import Commit, ConsumerRule, folded_commit
from bnfold.folding.rules.gemm import check_c_broadcast, set_beta_to_one
from bnfold.folding.rules.matmul import become_gemm
from bnfold.graph.node_attrs import float_attr, int_attr, str_attr
from bnfold.graph.skip import Skip
from bnfold.words import describe


def prepare_conv(ctx: FoldContext, conv: ir.Node, params: AffineParams) -> Commit:
    weight = ctx.kernel(conv)
    bias = ctx.bias(conv, 2, weight.shape[0])
    group = int_attr(conv, "group", 1)
    if group < 1 or weight.shape[0] % group:
        raise Skip(f"{describe(conv)} has {weight.shape[0]} output channels, not divisible by group {group}")
    scale, shift = params.for_channels(weight.shape[1] * group, f"input of {describe(conv)}")
    if params.has_shift and _pads_with_zeros(conv):
        raise Skip(f"padding: {describe(conv)} pads its input with zeros, which the shift would not reach")
    with_shift = params.has_shift
    return folded_commit(
        ctx,
        conv,
        lambda: fold_math.fold_conv_input_channels(
            weight, bias, scale, shift, group, with_shift=with_shift, dtype=weight.dtype
        ),
        weight,
        weight if bias is None else bias,
        write_bias=bias is not None or with_shift,
    )


def _pads_with_zeros(conv: ir.Node) -> bool:
    if str_attr(conv, "auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        return True
    pads = conv.attributes.get("pads")
    return pads is not None and any(int(p) != 0 for p in pads.value)


def prepare_gemm(ctx: FoldContext, gemm: ir.Node, params: AffineParams) -> Commit:
    if int_attr(gemm, "transA", 0):
        raise Skip(f"{describe(gemm)} has transA=1: the channel would index its output's rows")
    b_matrix = ctx.matrix(gemm, role="B")
    trans_b = bool(int_attr(gemm, "transB", 0))
    columns = b_matrix.shape[0] if trans_b else b_matrix.shape[1]
    scale, shift = params.for_channels(
        b_matrix.shape[1] if trans_b else b_matrix.shape[0], f"input of {describe(gemm)}"
    )
    c_bias = ctx.optional_weight(gemm, 2, "C")
    if c_bias is not None:
        check_c_broadcast(gemm, c_bias.shape, columns)
    alpha, beta = float_attr(gemm, "alpha", 1.0), float_attr(gemm, "beta", 1.0)
    return folded_commit(
        ctx,
        gemm,
        lambda: fold_math.fold_gemm_input_columns(
            b_matrix, c_bias, scale, shift, trans_b=trans_b, alpha=alpha, beta=beta, dtype=b_matrix.dtype
        ),
        b_matrix,
        b_matrix if c_bias is None else c_bias,
        roles=("B", "C"),
        after=lambda: set_beta_to_one(ctx, gemm),
    )


def prepare_matmul(ctx: FoldContext, matmul: ir.Node, params: AffineParams) -> Commit:
    rank = ctx.types.rank(matmul.inputs[0])
    if rank != 2:
        raise Skip(
            f"input of {describe(matmul)} has rank {rank if rank is not None else 'unknown'}, "
            "so the channel axis 1 is not the one it contracts"
        )
    b_matrix = ctx.matrix(matmul)
    scale, shift = params.for_channels(b_matrix.shape[0], f"input of {describe(matmul)}")
    return become_gemm(
        ctx,
        matmul,
        lambda: fold_math.fold_gemm_input_columns(
            b_matrix, None, scale, shift, trans_b=False, alpha=1.0, beta=1.0, dtype=b_matrix.dtype
        ),
        b_matrix,
    )


RULES = (
    ConsumerRule(("Conv",), prepare_conv),
    ConsumerRule(("Gemm",), prepare_gemm),
    ConsumerRule(("MatMul",), prepare_matmul),
)
