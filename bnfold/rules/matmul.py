"""MatMul → BN, for a constant 2-D weight and a rank-2 output.

Before:  Y = BN(MatMul(A, B))           A: [M, K], B: [K, N], BN over the N columns
After:   Y = Gemm(A, B', t)             B'[:, n] = B[:, n]·s[n]

The MatMul node becomes a Gemm in place (name, doc string and metadata kept).
With a rank > 2 output BN's channel axis 1 is not B's column axis, so nothing can
go into B: the BN is left to the standalone rewrite.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold import fold_math
from bnfold.batchnorm import BnParams, Skip
from bnfold.rules.base import FoldContext, describe, mark_gemm_broadcast, require_channels, rounded


def fold(ctx: FoldContext, matmul: ir.Node, params: BnParams) -> None:
    rank = ctx.hints.rank(matmul.outputs[0]) or ctx.hints.rank(matmul.inputs[0])
    if rank is None:
        raise Skip(f"rank of the output of {describe(matmul)} is unknown")
    if rank != 2:
        raise Skip(f"output of {describe(matmul)} has rank {rank}; BN's channel axis 1 is not the weight's column axis")
    if ctx.hints.rank(matmul.inputs[0]) not in (None, 2):
        raise Skip(f"input A of {describe(matmul)} is not 2-D")
    b_matrix = ctx.weight(matmul, 1, "weight")
    if b_matrix.ndim != 2:
        raise Skip(f"weight of {describe(matmul)} has rank {b_matrix.ndim}, expected 2")
    require_channels(matmul, b_matrix.shape[1], params.channels)
    new_b, new_c = fold_math.fold_gemm(b_matrix, None, params.scale, params.shift, trans_b=False, beta=1.0)
    new_b = rounded(new_b, b_matrix)
    new_c = rounded(new_c, b_matrix)
    matmul.op_type = "Gemm"
    ctx.write_input(matmul, 2, new_c, "bias")
    ctx.write_input(matmul, 1, new_b, "weight")
    mark_gemm_broadcast(ctx, matmul)
