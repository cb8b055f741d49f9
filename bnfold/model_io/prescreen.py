"""Whether a model can have anything to fold, from one cheap pass over its ModelProto (no onnx-ir).

A model without BatchNormalization, without a Mul/Add/Sub/Div by a possibly constant
value next to a node that holds a constant weight, and without an Add/Sum/Sub of such
nodes' branches, leaves the pass with nothing to do: bnfold then copies it through
(see file_run.py) instead of loading it into onnx-ir. The scan only ever errs
towards "maybe": it knows no rule, only which shapes of graph a rule could act on.

* possibly constant: an initializer (not a graph input), a Constant's output, or
  the output of a deterministic default-domain node whose inputs all are;
* a weighted node: an op a rule folds into (the registry, op_types.py: Conv,
  ConvTranspose, DeformConv, Gemm, MatMul) with a possibly constant input other
  than its first;
* next to: reached through Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Pad,
  Identity, Dropout or Cast, towards the producer (a weighted node, or a Concat of
  them) or towards the consumers. A chain of such maps is seen at the end that
  touches the weighted node.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx

from bnfold.graph.op_types import BATCH_NORM, BRANCH_SUMS, ELEMENTWISE_AFFINE, NONDETERMINISTIC, PASS_THROUGH, WEIGHTED
from bnfold.graph.proto_walk import node_graphs, proto_graphs


def may_fold(model: onnx.ModelProto) -> bool:
    """False only when the pass certainly finds nothing to fold in any graph, subgraph or function."""
    node_lists = list(_node_lists(model))
    op_types = {node.op_type for nodes in node_lists for node in nodes}
    if BATCH_NORM in op_types:
        return True
    if not op_types & (ELEMENTWISE_AFFINE | BRANCH_SUMS):
        return False  # no Mul/Add/Sub/Div/Sum at all: settled by op types alone
    constants = {t.name for graph in proto_graphs(model) for t in graph.initializer}
    constants -= {i.name for graph in proto_graphs(model) for i in graph.input}
    return any(_may_fold([_Node(node) for node in nodes], constants) for nodes in node_lists)


class _Node:
    """What the scan reads of a NodeProto, read once (protobuf field access is not free)."""

    __slots__ = ("inputs", "op", "outputs", "standard", "subgraphs")

    def __init__(self, node: onnx.NodeProto) -> None:
        self.op = node.op_type
        self.standard = node.domain in ("", "ai.onnx")
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.subgraphs = bool(node.attribute) and any(node_graphs(node))


def _node_lists(model: onnx.ModelProto) -> Iterator[Iterable[onnx.NodeProto]]:
    """The main graph, its subgraphs, every function body and the subgraphs in them."""
    for graph in proto_graphs(model, in_functions=True):
        yield graph.node
    for function in model.functions:
        yield function.node


def _may_fold(nodes: list[_Node], outer_constants: set[str]) -> bool:
    producer: dict[str, _Node] = {}
    consumers: dict[str, list[_Node]] = {}
    for node in nodes:
        if node.op == "BatchNormalization" and node.standard:
            return True
        for name in node.outputs:
            producer[name] = node
        for name in node.inputs:
            consumers.setdefault(name, []).append(node)
    constants = _constants(nodes, outer_constants)
    weighted = {
        id(node)
        for node in nodes
        if node.op in WEIGHTED and node.standard and any(name in constants for name in node.inputs[1:])
    }
    for node in nodes:
        if not node.standard:
            continue
        if node.op in ELEMENTWISE_AFFINE and _affine_next_to_weights(node, constants, producer, consumers, weighted):
            return True
        if node.op in BRANCH_SUMS and _sums_weighted_branches(node, producer, weighted):
            return True
    return False


def _constants(nodes: list[_Node], outer: set[str]) -> set[str]:
    """Every possibly constant value; sweeps repeat until none is added, so node order does not matter."""
    constants = set(outer)
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if node.outputs and node.outputs[0] not in constants and _constant_node(node, constants):
                constants.update(name for name in node.outputs if name)
                changed = True
    return constants


def _constant_node(node: _Node, constants: set[str]) -> bool:
    if node.op == "Constant":
        return node.standard
    if not node.inputs or not all(not name or name in constants for name in node.inputs):
        return False
    return node.standard and node.op not in NONDETERMINISTIC and not node.subgraphs


def _affine_next_to_weights(node: _Node, constants, producer, consumers, weighted) -> bool:
    operands = [name for name in node.inputs if name]
    variable = [name for name in operands if name not in constants]
    if len(operands) != 2 or len(variable) != 1:
        return False  # not x with a constant: not an affine map the pass reads
    value = variable[0]
    while (source := producer.get(value)) is not None and source.op in PASS_THROUGH and source.inputs:
        value = source.inputs[0]
    source = producer.get(value)
    if source is not None and (id(source) in weighted or source.op == "Concat"):
        return True
    return _feeds_weights(node.outputs[0], consumers, weighted)


def _feeds_weights(value: str, consumers, weighted) -> bool:
    pending, seen = [value], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for consumer in consumers.get(current, ()):
            if id(consumer) in weighted:
                return True
            if consumer.op in PASS_THROUGH and consumer.inputs and consumer.inputs[0] == current:
                pending.extend(consumer.outputs[:1])
    return False


def _sums_weighted_branches(node: _Node, producer, weighted) -> bool:
    """An Add/Sum/Sub of at least one weighted branch and another weighted branch or that branch's own input."""
    sources = [producer.get(name) for name in node.inputs if name]
    branches = [source for source in sources if source is not None and id(source) in weighted]
    if not branches:
        return False
    inputs = {branch.inputs[0] for branch in branches if branch.inputs}
    return len(branches) > 1 or any(name in inputs for name in node.inputs)
