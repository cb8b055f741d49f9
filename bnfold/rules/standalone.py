"""A BN with nothing to fold into, rewritten as elementwise nodes.

Mul + Add (`--standalone mul-add`, for runtimes without BatchNormalization):
    Before:  Y = BN(X)                      X: [N, C, D1, …]
    After:   Y = Add(Mul(X, s'), t')        s', t': [C, 1, …, 1] in X's dtype

One Add, when the scale s folds forward into the consumers (a Conv that pads its
input with zeros takes a pure scale, but not a shift):
    After:   Y = Add(X, t'/s')              and the consumers' weights absorb s

For a per-element BN (spatial=0, opset < 9) the constants keep the full parameter
shape [C, D1, …], which broadcasts onto X from the right just as BN does.
Before opset 7 Mul/Add broadcast only with `broadcast=1, axis=1`, which aligns
the constants (then shaped [C] or [C, D1, …]) with X's axis 1.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold import fold_math
from bnfold.affine import AffineParams
from bnfold.rewire import bypass_node, data_input, graph_of, retire_node
from bnfold.rules.base import FoldContext, rounded
from bnfold.skip import Skip

LEGACY_BROADCAST_BEFORE = 7


def rewrite_as_mul_add(ctx: FoldContext, bn: ir.Node, params: AffineParams) -> tuple[ir.Node, ir.Node]:
    """Replace `bn` by Mul(s) then Add(t); returns (mul, add). Skip (graph untouched) when impossible."""
    scale = _channel_constant(ctx, bn, params.scale, params)
    shift = _channel_constant(ctx, bn, params.shift, params)
    mul, add = _replace(
        ctx, bn, [("Mul", scale, "scale", "scaled", "mul"), ("Add", shift, "shift", "shifted", "add")], same_value=True
    )
    return mul, add


def rewrite_as_shift(ctx: FoldContext, bn: ir.Node, params: AffineParams) -> ir.Node:
    """Replace `bn` by Add(t/s), for when its scale s goes elsewhere; returns the Add.

    The Add's output is not the BN's output (the scale is missing), so it gets its
    own name: the check must not compare it with the original's BN output.
    """
    if params.per_element or np.any(params.scale == 0):
        raise Skip("a zero scale cannot be moved after the shift")
    shift = _channel_constant(ctx, bn, params.shift / params.scale, params)
    (add,) = _replace(ctx, bn, [("Add", shift, "shift", "shifted", "add")], same_value=False)
    return add


def _channel_constant(ctx: FoldContext, bn: ir.Node, vector: np.ndarray, params: AffineParams) -> np.ndarray:
    """`vector` shaped to broadcast on the BN input's channel axis, rounded to the input's dtype."""
    data = bn.inputs[0]
    channels = ctx.types.dim(data, 1)
    if channels is not None and not params.per_element and channels != params.channels:
        raise Skip(f"parameter shape ({params.channels},) does not match channel count {channels}")
    if not params.per_element and ctx.opset >= LEGACY_BROADCAST_BEFORE:
        rank = ctx.types.rank(data)
        if rank is None:
            raise Skip("rank of the input is unknown, so the channel axis cannot be broadcast")
        vector = fold_math.per_channel_broadcast(vector, rank)
    return rounded(vector, np.empty(0, dtype=_data_dtype(ctx, bn)))


def _data_dtype(ctx: FoldContext, bn: ir.Node) -> np.dtype:
    for value in (bn.inputs[0], bn.outputs[0]):
        dtype = ctx.types.dtype(value)
        if dtype is not None:
            return dtype.numpy()
    raise Skip("element type of the input is unknown")


def _replace(
    ctx: FoldContext, bn: ir.Node, steps: list[tuple[str, np.ndarray, str, str, str]], same_value: bool
) -> list[ir.Node]:
    """Put a chain of elementwise nodes (op, constant, constant/output/node name hints) where `bn` was.

    `same_value`: the chain computes the BN's output, and its last value takes over the BN's name.
    """
    base = bn.name or "BatchNormalization"
    # Before opset 7, Mul/Add broadcast only when told so, aligning B at `axis`.
    legacy = {"broadcast": 1, "axis": 1} if ctx.opset < LEGACY_BROADCAST_BEFORE else None
    nodes: list[ir.Node] = []
    current = data_input(bn)
    for op, array, constant_hint, output_hint, node_hint in steps:
        constant = ctx.new_constant(bn, f"{base}_{constant_hint}", array)
        node = ir.node(op, [current, constant], attributes=legacy, name=ctx.names.fresh(f"{base}_{node_hint}"))
        node.outputs[0].name = ctx.names.fresh(f"{base}_{output_hint}")
        nodes.append(node)
        current = node.outputs[0]
    graph_of(bn).insert_before(bn, nodes)
    if same_value:
        retire_node(bn, current)
    else:
        bypass_node(bn, current)
    return nodes
