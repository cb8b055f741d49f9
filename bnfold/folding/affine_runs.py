"""Runs of per-channel affine nodes joined by single-use edges: the one walk that `--bn-only` and the collapse share.

`walk` goes from a node along single-use edges, backward through data inputs or
forward through the one consumer, staying in the node's graph; it yields each node
the caller accepts and passes over the nodes it is told to (layout and transparent
nodes, for `--bn-only`). `--bn-only` folds a Mul/Add/Sub/Div only when its run
reaches a BN (`affine_run`); the collapse folds a BN no move took together with the
affine nodes of its run (folding/standalone.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import onnx_ir as ir

from bnfold.folding.context import FoldContext
from bnfold.folding.layout import layout_kind
from bnfold.graph.editing import use_count
from bnfold.graph.node_attrs import in_default_domain
from bnfold.graph.op_types import ELEMENTWISE_AFFINE


@dataclass
class Walk:
    """The nodes a walk accepted, nearest first, each with its data input's index; `end`, the node that ended
    it across a single-use edge (None when a shared value, a graph output or the graph's edge did)."""

    found: list[tuple[ir.Node, int]] = field(default_factory=list)
    end: ir.Node | None = None

    def __iter__(self) -> Iterator[tuple[ir.Node, int]]:
        return iter(self.found)


def walk(
    start: ir.Node,
    data_index: int,
    backward: bool,
    accept: Callable[[ir.Node], int | None],
    passes: Callable[[ir.Node], bool] = lambda node: False,
) -> Walk:
    """Walk from `start` (whose data input is `data_index`) along single-use edges.

    `accept(node)` is the index of a node's data input when the run goes on through it,
    else None. Nodes `passes` holds for are walked through (their data input is input 0)
    and not reported. Forward, a node is entered only through its data input.
    """
    result = Walk()
    current, index = start, data_index
    value = start.inputs[data_index] if backward else start.outputs[0]
    while value is not None and not value.is_graph_output() and use_count(value) == 1:
        node = value.producer() if backward else next(iter(value.uses())).node
        if node is None or node.graph is not start.graph:
            return result
        if passes(node) and (backward or node.inputs[0] is value):
            value = node.inputs[0] if backward else node.outputs[0]
            continue
        found = accept(node)
        if found is None or (not backward and node.inputs[found] is not value):
            result.end = node
            return result
        result.found.append((node, found))
        current, index = node, found
        value = current.inputs[index] if backward else current.outputs[0]
    return result


def affine_run(context: FoldContext, node: ir.Node, bns) -> tuple[set[ir.Node], bool]:
    """The elementwise-with-constant nodes linked to `node` by single-use edges (also through layout and
    transparent nodes), and whether a BN is among them."""
    data_index = _data_index(context, node)
    if data_index is None:
        return {node}, False

    def accept(other: ir.Node) -> int | None:
        return _data_index(context, other) if _is_elementwise_candidate(context, other) else None

    def passes(other: ir.Node) -> bool:
        return layout_kind(context, other) is not None

    before = walk(node, data_index, True, accept, passes)
    after = walk(node, data_index, False, accept, passes)
    members = {node} | {member for member, _ in before} | {member for member, _ in after}
    return members, before.end in bns or after.end in bns


def _is_elementwise_candidate(context: FoldContext, node: ir.Node) -> bool:
    return (
        node.op_type in ELEMENTWISE_AFFINE
        and node not in context.runtime_fused
        and in_default_domain(node)
        and _data_index(context, node) is not None
    )


def _data_index(context: FoldContext, node: ir.Node) -> int | None:
    """The index of the one non-constant input of a two-input elementwise node, or None."""
    if len(node.inputs) != 2 or any(value is None for value in node.inputs):
        return None
    constant = [context.resolver.value_of(value) is not None for value in node.inputs]
    return constant.index(False) if constant.count(True) == 1 else None
