"""MatMul → BN over the last axis of its output (the weight's columns), for a constant 2-D weight B.

Rank-2 output:  Y = BN(MatMul(A, B))            A: [M, K], B: [K, N]
        After:  Y = Gemm(A, B', t)              B'[:, n] = B[:, n]·s[n]
                The MatMul node becomes a Gemm in place (name, doc string and metadata kept).

Rank > 2 output (tokens [B, T, K] × [K, N]; the BN sees it through a Reshape that keeps the last axis):
        After:  Y = Add(MatMul(A, B'), t')      the shift needs a bias: the Add that follows the MatMul
                                                (its constant t'' becomes t''·s + t), or a new one
                                                in the BN's place (no more nodes than before)

A pure shift into a rank > 2 MatMul without a bias Add is refused: it would only move the Add.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.folding import fold_math
from bnfold.folding.affine import AffineParams
from bnfold.folding.context import FoldContext
from bnfold.folding.rules.base import Commit, ProducerRule, folded_commit, rounded
from bnfold.graph.editing import graph_of, replace_input
from bnfold.graph.skip import Skip
from bnfold.words import describe


def feature_axis(ctx: FoldContext, matmul: ir.Node) -> int | None:
    rank = output_rank(ctx, matmul)
    return None if rank is None else rank - 1


def output_rank(ctx: FoldContext, matmul: ir.Node) -> int | None:
    rank = ctx.types.rank(matmul.outputs[0])
    if rank is None:
        rank_a = ctx.types.rank(matmul.inputs[0])
        rank = None if rank_a is None else max(rank_a, 2)
    return rank


def _b_matrix(ctx: FoldContext, matmul: ir.Node) -> np.ndarray:
    if output_rank(ctx, matmul) is None:
        raise Skip(f"rank of the output of {describe(matmul)} is unknown")
    return ctx.matrix(matmul)


def output_channels(ctx: FoldContext, matmul: ir.Node) -> int:
    return int(_b_matrix(ctx, matmul).shape[1])


def prepare(ctx: FoldContext, matmul: ir.Node, params: AffineParams, bias_add: ir.Node | None = None) -> Commit:
    b_matrix = _b_matrix(ctx, matmul)
    scale, shift = params.for_channels(b_matrix.shape[1], f"output of {describe(matmul)}")
    if output_rank(ctx, matmul) == 2 and ctx.types.rank(matmul.inputs[0]) in (None, 2) and bias_add is None:
        return become_gemm(
            ctx,
            matmul,
            lambda: fold_math.fold_gemm(b_matrix, None, scale, shift, trans_b=False, beta=1.0, dtype=b_matrix.dtype),
            b_matrix,
            bias_alone=lambda: fold_math.gemm_output_bias(None, scale, shift, beta=1.0),
            factors=scale,
        )
    if bias_add is None and not params.has_shift:
        return _scaled(ctx, matmul, b_matrix, scale)
    if bias_add is None and np.all(scale == 1):
        raise Skip(f"{describe(matmul)} has rank {output_rank(ctx, matmul)} and no bias Add to take a shift")
    return _with_bias(ctx, matmul, b_matrix, scale, shift, bias_add)


RULE = ProducerRule(
    ("MatMul",), weight_input=1, output_channels=output_channels, prepare=prepare, feature_axis=feature_axis
)


def _scaled(ctx: FoldContext, matmul: ir.Node, b_matrix: np.ndarray, scale: np.ndarray) -> Commit:
    return folded_commit(
        ctx,
        matmul,
        lambda: (fold_math.scale_output_channels(b_matrix, scale, channel_axis=1, dtype=b_matrix.dtype), None),
        b_matrix,
        b_matrix,
        write_bias=False,
    )


def _with_bias(
    ctx: FoldContext,
    matmul: ir.Node,
    b_matrix: np.ndarray,
    scale: np.ndarray,
    shift: np.ndarray,
    bias_add: ir.Node | None,
) -> Commit:
    """B' = B·s, and the bias Add's constant b·s + t (b = 0 for a new Add)."""
    bias = None
    if bias_add is not None:
        bias = _bias_vector(ctx, bias_add, b_matrix.shape[1])
    new_bias = rounded(fold_math.output_bias(bias, scale, shift), np.empty(0, b_matrix.dtype))
    weight = _scaled(ctx, matmul, b_matrix, scale)

    def commit() -> None:
        weight()
        if bias_add is not None:
            index = 1 if ctx.resolver.value_of(bias_add.inputs[1]) is not None else 0
            ctx.write_input(bias_add, index, new_bias, "bias")
            return
        _insert_bias(ctx, matmul, new_bias)

    return commit


def _bias_vector(ctx: FoldContext, bias_add: ir.Node, columns: int) -> np.ndarray:
    constant = next(a for a in (ctx.resolver.value_of(v) for v in bias_add.inputs) if a is not None)
    if constant.size not in (1, columns) or (constant.ndim and constant.shape[-1] not in (1, columns)):
        raise Skip(f"the constant of {describe(bias_add)} does not run along the output's last axis")
    return np.broadcast_to(constant.reshape(-1), (columns,)).astype(np.float64)


def _insert_bias(ctx: FoldContext, matmul: ir.Node, bias: np.ndarray) -> None:
    """Add(MatMul output, bias), read by what read the MatMul's output."""
    output = matmul.outputs[0]
    base = matmul.name or "MatMul"
    constant = ctx.new_constant(matmul, f"{base}_bias", bias)
    add = ir.node("Add", [output, constant], name=ctx.names.fresh(f"{base}_bias_add"))
    add.outputs[0].name = ctx.names.fresh(f"{base}_biased")
    graph = graph_of(matmul)
    graph.insert_after(matmul, add)
    for use in list(output.uses()):
        if use.node is not add:
            replace_input(graph, use.node, use.idx, add.outputs[0])


def become_gemm(ctx: FoldContext, matmul: ir.Node, fold, b_matrix, **deferral) -> Commit:
    """A Commit turning MatMul(A, B) into Gemm(A, B', C) in place; `fold()` gives (B', C) in float64.

    `deferral`: `bias_alone` and `factors`, as for `folded_commit`.
    """

    def to_gemm() -> None:
        matmul.op_type = "Gemm"

    return folded_commit(
        ctx, matmul, fold, b_matrix, b_matrix, before=to_gemm, after=lambda: ctx.mark_gemm_broadcast(matmul), **deferral
    )
