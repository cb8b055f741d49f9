"""A standalone BN: one that no move could fold into a linear layer.

It first absorbs the affine nodes around it (the collapse). Then it stays one
BatchNormalization (`--standalone bn`, the default), or is rewritten as elementwise
nodes (`--standalone mul-add`).

The collapse:

The nodes joined to such a BN by single-use edges — other such BNs, Mul/Add/Sub/Div by
a per-channel constant — on either side become part of it: the chain is one
BatchNormalization whose parameters compute the composed map (float64, rounded once
to each parameter's dtype). A chain never costs more nodes than it had.

The rewrite:

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

import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from bnfold.folding import fold_math
from bnfold.folding.affine import AffineParams, read_elementwise
from bnfold.folding.affine_runs import walk
from bnfold.folding.batchnorm import DEFAULT_EPSILON
from bnfold.folding.context import FoldContext
from bnfold.folding.ledger import BnState, Ledger
from bnfold.folding.rules.base import rounded
from bnfold.graph.editing import bypass_node, data_input, graph_of, remove_if_dead, retire_node, take_over_output
from bnfold.graph.node_attrs import float_attr
from bnfold.graph.op_types import ELEMENTWISE_AFFINE
from bnfold.graph.skip import Skip
from bnfold.words import describe

logger = logging.getLogger(__name__)


def collapse_leftovers(ledger: Ledger, contexts: Mapping[ir.Graph, FoldContext]) -> bool:
    """Collapse every pending BN with its neighbours; True when the graph changed."""
    collapsed = False
    for bn, state in ledger.bns.items():
        context = contexts[state.scope.graph]
        if state.pending and _refuse_channel_mismatch(ledger, context, bn, state):
            continue
        if state.pending and not state.map.per_element:
            collapsed |= _collapse(ledger, context, bn, state)
    return collapsed


def _refuse_channel_mismatch(ledger: Ledger, context: FoldContext, bn: ir.Node, state: BnState) -> bool:
    """Leave a BN exactly as it is when its parameters do not match its input's channels (as far as inferred)."""
    channels = context.types.dim(bn.inputs[0], 1)
    if state.map.per_element or channels is None or state.map.channels == channels:
        return False
    mismatch = f"parameter shape ({state.map.channels},) does not match channel count {channels}"
    ledger.bn_given_up(state, f"{state.reason}; {mismatch}")
    return True


def _collapse(ledger: Ledger, context: FoldContext, bn: ir.Node, state: BnState) -> bool:
    """Absorb the affine neighbours of `bn` into its parameters; False (graph untouched) when there are none."""
    before = _neighbours(ledger, context, bn, backward=True)
    after = _neighbours(ledger, context, bn, backward=False)
    if not before and not after:
        return False
    try:
        params = state.map
        for _, _, found in before:
            params = found.then(params)
        for _, _, found in after:
            params = params.then(found)
        arrays = _bn_arrays(context, bn, params)
    except Skip as skip:
        logger.info("BatchNormalization %s keeps its neighbours: %s", state.name, skip.reason)
        return False
    graph = bn.graph
    assert graph is not None  # a BN of the graph being folded
    if before:
        node, index, _ = before[-1]
        old = bn.inputs[0]
        bn.replace_input_with(0, node.inputs[index])
        remove_if_dead(graph, old)
    if after:
        last = after[-1][0].outputs[0]
        take_over_output(last, bn.outputs[0])
        remove_if_dead(graph, last)
    for index, (role, array) in enumerate(arrays, start=1):
        context.write_input(bn, index, array, role)
    state.sites = [bn.outputs[0]]
    for node, _, _ in before + after:
        state.absorbed.append(describe(node))
        ledger.absorbed(node, state, bn.outputs[0])
    state.params = params
    return True


def _neighbours(ledger: Ledger, context: FoldContext, bn: ir.Node, backward: bool) -> list:
    """(node, data index, AffineParams) of the affine nodes joined to `bn` by single-use edges, nearest first."""
    maps: dict[ir.Node, AffineParams] = {}

    def accept(node: ir.Node) -> int | None:
        found = _leftover_affine(ledger, context, node)
        if found is None:
            return None
        maps[node] = found[1]
        return found[0]

    return [(node, index, maps[node]) for node, index in walk(bn, 0, backward, accept)]


def _leftover_affine(ledger: Ledger, context: FoldContext, node: ir.Node) -> tuple[int, AffineParams] | None:
    """(data index, map) of a BN no move took, or of a per-channel Mul/Add/Sub/Div; None otherwise."""
    state = ledger.bns.get(node)
    if state is not None:
        return (0, state.map) if state.pending and not state.map.per_element else None
    if node.op_type not in ELEMENTWISE_AFFINE or node in ledger.created_by or node in context.runtime_fused:
        return None
    try:
        found = read_elementwise(node, context.resolver.value_of, context.types.rank, context.types.dim)
    except Skip:
        return None
    return (found.data_index, found.params) if found.axis in (1, None) else None


def _bn_arrays(context: FoldContext, bn: ir.Node, params: AffineParams) -> list[tuple[str, np.ndarray]]:
    """The BN's four parameters computing `params` exactly, each rounded once to its current dtype."""
    values = fold_math.bn_parameters(params.scale, params.shift, float_attr(bn, "epsilon", DEFAULT_EPSILON))
    roles = ("scale", "B", "input_mean", "input_var")
    return [
        (role, rounded(array, _parameter(context, bn, index)))
        for index, (role, array) in enumerate(zip(roles, values, strict=True), start=1)
    ]


def _parameter(context: FoldContext, bn: ir.Node, index: int) -> np.ndarray:
    array = context.resolver.value_of(bn.inputs[index])
    if array is None:  # screened: a pending BN's parameters are constants
        raise Skip(f"parameter {index} of {describe(bn)} is not constant")
    return array


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
