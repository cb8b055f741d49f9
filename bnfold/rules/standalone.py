"""Standalone BN → Mul + Add.

Before:  Y = BN(X)                      X: [N, C, D1, …]
After:   Y = Add(Mul(X, s'), t')        s', t': [C, 1, …, 1] in X's dtype
   or    Y = Mul(Add(X, t'/s'), s')     when the BN feeds Convs that pad with zeros, so
                                        that the Mul can still fold forward into them

For a per-element BN (spatial=0, opset < 9) s' and t' keep the full parameter
shape [C, D1, …], which broadcasts onto X from the right just as BN does.
Before opset 7 Mul/Add broadcast only with `broadcast=1, axis=1`, which aligns
s' and t' (then shaped [C] or [C, D1, …]) with X's axis 1.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold import fold_math
from bnfold.affine import AffineParams, Skip
from bnfold.graph import retire_node
from bnfold.rules.base import FoldContext, rounded

LEGACY_BROADCAST_BEFORE = 7


def rewrite(ctx: FoldContext, bn: ir.Node, params: AffineParams, *,
            shift_first: bool = False) -> tuple[ir.Node, ir.Node]:
    """Replace `bn` by Mul + Add (or, `shift_first`, by Add(t/s) + Mul); returns (mul, add).

    Shift first suits a BN that feeds a Conv padding its input with zeros: the
    trailing Mul (a pure scale) can then still fold forward into that Conv.
    """
    if shift_first:
        if params.per_element or np.any(params.scale == 0):
            raise Skip("a zero scale cannot be moved after the shift")
        params = AffineParams(params.scale, params.shift / params.scale)
    data = bn.inputs[0]
    channels = ctx.hints.dim(data, 1)
    if channels is not None and not params.per_element and channels != params.channels:
        raise Skip(f"parameter shape ({params.channels},) does not match channel count {channels}")
    if params.per_element or ctx.opset < LEGACY_BROADCAST_BEFORE:
        scale, shift = params.scale, params.shift
    else:
        rank = ctx.hints.rank(data)
        if rank is None:
            raise Skip("rank of the input is unknown, so the channel axis cannot be broadcast")
        scale = fold_math.per_channel_broadcast(params.scale, rank)
        shift = fold_math.per_channel_broadcast(params.shift, rank)
    dtype = _data_dtype(ctx, bn)
    like = np.empty(0, dtype=dtype)
    scale, shift = rounded(scale, like), rounded(shift, like)
    return _replace_with_mul_add(ctx, bn, scale, shift, shift_first)


def _data_dtype(ctx: FoldContext, bn: ir.Node) -> np.dtype:
    for value in (bn.inputs[0], bn.outputs[0]):
        dtype = ctx.hints.dtype(value)
        if dtype is not None:
            return dtype.numpy()
    raise Skip("element type of the input is unknown")


def _replace_with_mul_add(ctx: FoldContext, bn: ir.Node, scale: np.ndarray, shift: np.ndarray,
                          shift_first: bool) -> tuple[ir.Node, ir.Node]:
    base = bn.name or "BatchNormalization"
    scale_value = ctx.new_constant(bn, f"{base}_scale", scale)
    shift_value = ctx.new_constant(bn, f"{base}_shift", shift)
    # Before opset 7, Mul/Add broadcast only when told so, aligning B at `axis`.
    legacy = {"broadcast": 1, "axis": 1} if ctx.opset < LEGACY_BROADCAST_BEFORE else None
    steps = [("Add", shift_value, "shifted", "add"), ("Mul", scale_value, "scaled", "mul")]
    if not shift_first:
        steps.reverse()
    nodes, current = {}, bn.inputs[0]
    for op, constant, output_hint, node_hint in steps:
        node = ir.node(op, [current, constant], attributes=legacy, name=ctx.names.fresh(f"{base}_{node_hint}"))
        node.outputs[0].name = ctx.names.fresh(f"{base}_{output_hint}")
        nodes[op] = node
        current = node.outputs[0]
    bn.graph.insert_before(bn, [nodes[op] for op, *_ in steps])
    retire_node(bn, current)
    return nodes["Mul"], nodes["Add"]
