"""Gemm → BN (rank-2 output, BN channel = column n).

Before:  Y = BN(α·A'·B' + β·C)            A' = Aᵀ if transA, B' = Bᵀ if transB
After:   Y = α·A'·B'' + 1·C'

Column n of B' is scaled by s[n] (row n of B when transB=1, column n otherwise);
C' = β·C·s + t with C broadcast against [N] first (C absent counts as 0), and β
becomes 1. α and transA are untouched: they act on the other side of the product.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.folding import fold_math
from bnfold.folding.affine import AffineParams
from bnfold.folding.context import FoldContext
from bnfold.folding.rules.base import Commit, ProducerRule, folded_commit
from bnfold.graph.node_attrs import float_attr, int_attr
from bnfold.graph.skip import Skip
from bnfold.words import describe


def _b_matrix(ctx: FoldContext, gemm: ir.Node):
    b_matrix = ctx.matrix(gemm, role="B")
    trans_b = bool(int_attr(gemm, "transB", 0))
    return b_matrix, trans_b


def output_channels(ctx: FoldContext, gemm: ir.Node) -> int:
    b_matrix, trans_b = _b_matrix(ctx, gemm)
    return int(b_matrix.shape[0] if trans_b else b_matrix.shape[1])


def prepare(ctx: FoldContext, gemm: ir.Node, params: AffineParams) -> Commit:
    b_matrix, trans_b = _b_matrix(ctx, gemm)
    c_bias = ctx.optional_weight(gemm, 2, "C")
    channels = b_matrix.shape[0] if trans_b else b_matrix.shape[1]
    scale, shift = params.for_channels(channels, f"output of {describe(gemm)}")
    if c_bias is not None:
        check_c_broadcast(gemm, c_bias.shape, channels)
    beta = float_attr(gemm, "beta", 1.0)
    return folded_commit(
        ctx,
        gemm,
        lambda: fold_math.fold_gemm(b_matrix, c_bias, scale, shift, trans_b=trans_b, beta=beta, dtype=b_matrix.dtype),
        b_matrix,
        b_matrix if c_bias is None else c_bias,
        roles=("B", "C"),
        after=lambda: set_beta_to_one(ctx, gemm),
        bias_alone=lambda: fold_math.gemm_output_bias(c_bias, scale, shift, beta=beta),
        factors=scale,
    )


RULE = ProducerRule(("Gemm",), weight_input=1, output_channels=output_channels, prepare=prepare)  # [M, N]: axis 1


def set_beta_to_one(ctx: FoldContext, gemm: ir.Node) -> None:
    gemm.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    ctx.mark_gemm_broadcast(gemm)


def check_c_broadcast(gemm: ir.Node, c_shape: tuple, channels: int) -> None:
    try:
        np.broadcast_shapes(c_shape, (channels,))
    except ValueError:
        raise Skip(f"C of {describe(gemm)} has shape {c_shape}, which does not broadcast to [{channels}]") from None
