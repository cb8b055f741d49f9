"""MatMul → BN, for a constant 2-D weight and a rank-2 output.

Before:  Y = BN(MatMul(A, B))           A: [M, K], B: [K, N], BN over the N columns
After:   Y = Gemm(A, B', t)             B'[:, n] = B[:, n]·s[n]

The MatMul node becomes a Gemm in place (name, doc string and metadata kept).
With a rank > 2 output BN's channel axis 1 is not B's column axis, so nothing can
go into B: the BN is left to the other moves or the standalone rewrite.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold import fold_math
from bnfold.affine import AffineParams, Skip
from bnfold.rules.base import Commit, FoldContext, describe, folded_commit


def _b_matrix(ctx: FoldContext, matmul: ir.Node):
    rank = ctx.hints.rank(matmul.outputs[0]) or ctx.hints.rank(matmul.inputs[0])
    if rank is None:
        raise Skip(f"rank of the output of {describe(matmul)} is unknown")
    if rank != 2:
        raise Skip(f"output of {describe(matmul)} has rank {rank}; BN's channel axis 1 is not the weight's column axis")
    if ctx.hints.rank(matmul.inputs[0]) not in (None, 2):
        raise Skip(f"input A of {describe(matmul)} is not 2-D")
    return ctx.matrix_or_kernel(matmul)


def output_channels(ctx: FoldContext, matmul: ir.Node) -> int:
    return int(_b_matrix(ctx, matmul).shape[1])


def prepare(ctx: FoldContext, matmul: ir.Node, params: AffineParams) -> Commit:
    b_matrix = _b_matrix(ctx, matmul)
    scale, shift = params.for_channels(b_matrix.shape[1], f"output of {describe(matmul)}")
    return become_gemm(ctx, matmul, lambda: fold_math.fold_gemm(b_matrix, None, scale, shift, trans_b=False, beta=1.0,
                                                                     dtype=b_matrix.dtype),
                       b_matrix, bias_alone=lambda: fold_math.gemm_output_bias(None, scale, shift, beta=1.0),
                       factors=scale)


def become_gemm(ctx: FoldContext, matmul: ir.Node, fold, b_matrix, **deferral) -> Commit:
    """A Commit turning MatMul(A, B) into Gemm(A, B', C) in place; `fold()` gives (B', C) in float64.

    `deferral`: `bias_alone` and `factors`, as for `folded_commit`.
    """

    def to_gemm() -> None:
        matmul.op_type = "Gemm"

    return folded_commit(ctx, matmul, fold, b_matrix, b_matrix, before=to_gemm,
                         after=lambda: ctx.mark_gemm_broadcast(matmul), **deferral)
