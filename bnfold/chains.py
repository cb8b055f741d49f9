"""Chains: runs of per-channel affine nodes linked by single-use edges, and whether a BN is among them.

`--bn-only` folds a Mul/Add/Sub/Div only when it sits in such a run with a BN; the
walk passes through layout and transparent nodes (layout.py) as the folds do.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.affine import ELEMENTWISE_OPS
from bnfold.layout import layout_kind
from bnfold.node_attrs import in_default_domain
from bnfold.rewire import use_count
from bnfold.rules.base import FoldContext


def affine_run(context: FoldContext, node: ir.Node, bns) -> tuple[set[ir.Node], bool]:
    """The elementwise-with-constant nodes linked to `node` by single-use edges (also through layout and
    transparent nodes), and whether a BN is among them."""
    members, touches_bn = {node}, False
    value = _data_input(context, node)
    while value is not None and use_count(value) == 1:  # backward, through the data input
        producer = value.producer()
        if producer is None:
            break
        if producer in bns:
            touches_bn = True
            break
        if layout_kind(context, producer) is not None:
            value = producer.inputs[0]
            continue
        if not _is_elementwise_candidate(context, producer):
            break
        members.add(producer)
        value = _data_input(context, producer)
    value = node.outputs[0]
    while not value.is_graph_output() and use_count(value) == 1:  # forward, through the single consumer
        consumer = next(iter(value.uses())).node
        if consumer in bns:
            touches_bn = True
            break
        if layout_kind(context, consumer) is not None and consumer.inputs[0] is value:
            value = consumer.outputs[0]
            continue
        if not _is_elementwise_candidate(context, consumer) or _data_input(context, consumer) is not value:
            break
        members.add(consumer)
        value = consumer.outputs[0]
    return members, touches_bn


def _is_elementwise_candidate(context: FoldContext, node: ir.Node) -> bool:
    return (
        node.op_type in ELEMENTWISE_OPS
        and node not in context.runtime_fused
        and in_default_domain(node)
        and len(node.inputs) == 2
        and _data_input(context, node) is not None
    )


def _data_input(context: FoldContext, node: ir.Node) -> ir.Value | None:
    """The one non-constant input of a two-input elementwise node, or None."""
    if len(node.inputs) != 2 or any(value is None for value in node.inputs):
        return None
    constant = [context.resolver.value_of(value) is not None for value in node.inputs]
    if constant.count(True) != 1:
        return None
    return node.inputs[constant.index(False)]
