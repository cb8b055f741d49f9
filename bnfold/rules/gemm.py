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

from bnfold import fold_math
from bnfold.batchnorm import BnParams, Skip
from bnfold.graph import float_attr, int_attr
from bnfold.rules.base import FoldContext, describe, mark_gemm_broadcast, require_channels, rounded


def fold(ctx: FoldContext, gemm: ir.Node, params: BnParams) -> None:
    b_matrix = ctx.weight(gemm, 1, "B")
    c_bias = ctx.optional_weight(gemm, 2, "C")
    if b_matrix.ndim != 2:
        raise Skip(f"B of {describe(gemm)} has rank {b_matrix.ndim}, expected 2")
    trans_b = bool(int_attr(gemm, "transB", 0))
    require_channels(gemm, b_matrix.shape[0] if trans_b else b_matrix.shape[1], params.channels)
    if c_bias is not None:
        _check_broadcast(gemm, c_bias.shape, params.channels)
    new_b, new_c = fold_math.fold_gemm(b_matrix, c_bias, params.scale, params.shift,
                                       trans_b=trans_b, beta=float_attr(gemm, "beta", 1.0))
    new_b = rounded(new_b, b_matrix)
    new_c = rounded(new_c, b_matrix if c_bias is None else c_bias)
    ctx.write_input(gemm, 2, new_c, "C")
    ctx.write_input(gemm, 1, new_b, "B")
    gemm.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    mark_gemm_broadcast(ctx, gemm)


def _check_broadcast(gemm: ir.Node, c_shape: tuple, channels: int) -> None:
    try:
        np.broadcast_shapes(c_shape, (channels,))
    except ValueError:
        raise Skip(f"C of {describe(gemm)} has shape {c_shape}, which does not broadcast to [{channels}]") from None
