"""The collapse phase: a BN that no move could take absorbs the affine nodes around it.

The nodes joined to such a BN by single-use edges — other such BNs, Mul/Add/Sub/Div by
a per-channel constant — on either side become part of it: the chain is one
BatchNormalization whose parameters compute the composed map (float64, rounded once
to each parameter's dtype). A chain never costs more nodes than it had.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from bnfold import fold_math
from bnfold.affine import ELEMENTWISE_OPS, AffineParams, read_elementwise
from bnfold.batchnorm import DEFAULT_EPSILON
from bnfold.ledger import BnState, Ledger
from bnfold.node_attrs import float_attr
from bnfold.rewire import remove_if_dead, take_over_output, use_count
from bnfold.rules.base import FoldContext, describe, rounded
from bnfold.skip import Skip

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
    found: list = []
    current, data_index = bn, 0
    while True:
        value = current.inputs[data_index] if backward else current.outputs[0]
        neighbour = _single_use_neighbour(value, backward)
        if neighbour is None or neighbour.graph is not bn.graph:
            return found
        affine = _leftover_affine(ledger, context, neighbour)
        if affine is None or (not backward and neighbour.inputs[affine[0]] is not value):
            return found
        found.append((neighbour, *affine))
        current, data_index = neighbour, affine[0]


def _leftover_affine(ledger: Ledger, context: FoldContext, node: ir.Node) -> tuple[int, AffineParams] | None:
    """(data index, map) of a BN no move took, or of a per-channel Mul/Add/Sub/Div; None otherwise."""
    state = ledger.bns.get(node)
    if state is not None:
        return (0, state.map) if state.pending and not state.map.per_element else None
    if node.op_type not in ELEMENTWISE_OPS or node in ledger.created_by or node in context.runtime_fused:
        return None
    try:
        found = read_elementwise(node, context.resolver.value_of, context.types.rank, context.types.dim)
    except Skip:
        return None
    return (found.data_index, found.params) if found.axis in (1, None) else None


def _single_use_neighbour(value: ir.Value | None, backward: bool) -> ir.Node | None:
    """The producer (backward) or the one consumer (forward) of `value`, when `value` is that edge's only use."""
    if value is None or value.is_graph_output() or use_count(value) != 1:
        return None
    return value.producer() if backward else next(iter(value.uses())).node


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
