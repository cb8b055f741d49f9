"""Walking an onnx ModelProto: its graphs and every tensor it stores."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx


def proto_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, sparse values, attributes, in all graphs and functions."""
    for function in proto.functions:
        yield from _attribute_tensors(function.node)
    for graph in proto_graphs(proto, in_functions=True):
        yield from graph.initializer
        yield from (sparse.values for sparse in graph.sparse_initializer)
        yield from _attribute_tensors(graph.node)


def proto_graphs(proto: onnx.ModelProto, *, in_functions: bool = False) -> Iterator[onnx.GraphProto]:
    """The main graph and every subgraph below it; with `in_functions`, the subgraphs inside function bodies too
    (a function's own body is a list of nodes, not a graph)."""
    roots = [proto.graph]
    if in_functions:
        for function in proto.functions:
            roots += [graph for node in function.node for graph in node_graphs(node)]
    return _graphs_below(roots)


def _graphs_below(roots: list[onnx.GraphProto]) -> Iterator[onnx.GraphProto]:
    """`roots` and every subgraph nested in their nodes' attributes."""
    graphs = list(roots)
    while graphs:
        graph = graphs.pop()
        yield graph
        for node in graph.node:
            if node.attribute:
                graphs.extend(node_graphs(node))


def _attribute_tensors(nodes) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        if not node.attribute:
            continue
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors


def node_graphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    found = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            found.append(attribute.g)
        found.extend(attribute.graphs)
    return found


def downstream(graph: onnx.GraphProto, names: Iterable[str]) -> set[str]:
    """Every value of `graph` computed (directly or not) from one of `names`."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            consumers.setdefault(name, []).append(node)
    found: set[str] = set()
    pending = list(names)
    while pending:
        for node in consumers.get(pending.pop(), ()):
            fresh = [output for output in node.output if output and output not in found]
            found.update(fresh)
            pending.extend(fresh)
    return found
