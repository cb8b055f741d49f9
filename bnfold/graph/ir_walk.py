"""Walking an onnx-ir model: its graphs (with the function each belongs to), initializers and tensor slots."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import onnx
import onnx.defs
import onnx_ir as ir


def ir_graphs(model: ir.Model) -> Iterator[tuple[ir.Graph, ir.Function | None]]:
    """Every graph of the model with the function it belongs to (None outside functions):
    the main graph and its subgraphs, then each function body and its subgraphs."""
    yield model.graph, None
    for subgraph in subgraphs(model.graph):
        yield subgraph, None
    for function in model.functions.values():
        yield function.graph, function
        for subgraph in subgraphs(function.graph):
            yield subgraph, function


def attributes_of(node: ir.Node) -> Iterable[ir.Attr]:
    """`node.attributes.values()`, through the plain dict behind onnx-ir's UserDict where there is one (faster)."""
    return getattr(node.attributes, "data", node.attributes).values()


@functools.cache
def _standard_graph_ops() -> frozenset[str]:
    """The standard ops with a graph attribute in any opset (If, Loop, Scan, SequenceMap in onnx 1.x).

    Read from onnx's schemas rather than listed, so that an op a later opset adds is still walked.
    """
    graph_types = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return frozenset(
        schema.name
        for schema in onnx.defs.get_all_schemas_with_history()
        if schema.domain == "" and any(a.type in graph_types for a in schema.attributes.values())
    )


def subgraphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """The graphs nested in `graph`'s nodes, at any depth, in the order onnx-ir's `subgraphs()` gives.

    Looks only at attributes; onnx-ir's walk visits every node through a generic
    iterator, which dominated the time on graphs of many thousand nodes.
    """
    graph_ops = _standard_graph_ops()
    for node in graph:
        if node.domain in ("", "ai.onnx") and node.op_type not in graph_ops:
            continue  # no other standard op's schema has a graph attribute
        for attribute in attributes_of(node):
            if attribute.is_ref():
                continue
            if attribute.type == ir.AttributeType.GRAPH:
                nested = [attribute.value]
            elif attribute.type == ir.AttributeType.GRAPHS:
                nested = list(attribute.value)
            else:
                continue
            for subgraph in nested:
                yield subgraph
                yield from subgraphs(subgraph)


def initializer_values(model: ir.Model) -> Iterator[ir.Value]:
    """The initializers of the main graph and its subgraphs (function bodies have none)."""
    for graph in (model.graph, *subgraphs(model.graph)):
        yield from graph.initializers.values()


@dataclass
class TensorSlot:
    """A place in the model that holds a tensor: an initializer, or (an item of) a tensor attribute."""

    tensor: ir.TensorProtocol
    name: str | None
    put: Callable[[ir.TensorProtocol], None]
    initializer: bool = False


def tensor_slots(model: ir.Model) -> Iterator[TensorSlot]:
    """Every tensor the model stores, initializers first, in declaration order."""
    for value in initializer_values(model):
        if value.const_value is not None:
            yield TensorSlot(value.const_value, value.name, partial(setattr, value, "const_value"), initializer=True)
    for graph, _ in ir_graphs(model):
        for node in graph:
            for attribute in list(attributes_of(node)):
                yield from _attribute_slots(node, attribute)


def _attribute_slots(node: ir.Node, attribute: ir.Attr) -> Iterator[TensorSlot]:
    if attribute.is_ref():  # a function's attribute reference holds no tensor
        return
    if attribute.type == ir.AttributeType.TENSOR:

        def put(tensor: ir.TensorProtocol) -> None:
            node.attributes[attribute.name] = ir.AttrTensor(attribute.name, tensor, doc_string=attribute.doc_string)

        yield TensorSlot(attribute.value, attribute.value.name, put)
    elif attribute.type == ir.AttributeType.TENSORS:
        for index, item in enumerate(attribute.value):

            def put_item(tensor: ir.TensorProtocol, index: int = index) -> None:
                items = list(node.attributes[attribute.name].value)
                items[index] = tensor
                node.attributes[attribute.name] = ir.AttrTensors(attribute.name, items, doc_string=attribute.doc_string)

            yield TensorSlot(item, item.name, put_item)
