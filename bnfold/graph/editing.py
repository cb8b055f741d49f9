"""Changing the graph: a value standing in for another, a node retired or bypassed, dead code removed,
constants added."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir


def graph_of(node: ir.Node) -> ir.Graph:
    """The graph `node` is in (a node being folded always is in one)."""
    if node.graph is None:
        raise AssertionError(f"{node.op_type} {node.name!r} is in no graph")
    return node.graph


def data_input(node: ir.Node, index: int = 0) -> ir.Value:
    """Input `index` of `node`, which a fold needs: an AssertionError when it is missing (validated earlier)."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        raise AssertionError(f"{node.op_type} {node.name!r} has no input {index}")
    return value


def use_count(value: ir.Value) -> int:
    """How many node inputs read `value`. onnx-ir's `uses()` copies them all into a tuple: on a weight shared by
    thousands of nodes, counting that way made every fold of it cost as much as all the others together."""
    uses = getattr(value, "_uses", None)
    return len(uses) if uses is not None else len(value.uses())


def values_in_use(values: Iterable[ir.Value | None]) -> list[ir.Value]:
    return [v for v in values if v is not None and (v.is_graph_output() or use_count(v) > 0)]


def take_over_output(old: ir.Value, new: ir.Value) -> None:
    """Make `new` stand where `old` was: its consumers, its graph-output slot and its name."""
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    name = old.name
    old.name = None
    new.name = name
    # Its whole identity, unset type/shape included: no value_info the input did not have.
    new.type = old.type
    new.shape = old.shape


def retire_node(node: ir.Node, replacement: ir.Value) -> None:
    """Remove single-output `node`, `replacement` taking over its output, then its dead inputs."""
    graph = graph_of(node)
    inputs = list(node.inputs)
    take_over_output(node.outputs[0], replacement)
    graph.remove(node, safe=True)
    for value in inputs:
        remove_if_dead(graph, value)


def bypass_node(node: ir.Node, data: ir.Value) -> None:
    """Remove `node`, its consumers reading `data` instead; its dead inputs go too.

    Unlike `retire_node`, `data` keeps its name: it may be a graph input or feed others.
    """
    graph = graph_of(node)
    inputs = list(node.inputs)
    node.outputs[0].replace_all_uses_with(data)
    graph.remove(node, safe=True)
    for value in inputs:
        remove_if_dead(graph, value)


def remove_if_dead(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove `value` and the nodes/initializers behind it that nothing uses any more.

    Only what became dead through `value` is removed; unrelated dead code stays.
    """
    stack = [value]
    while stack:
        current = stack.pop()
        if current is None or current.is_graph_output() or use_count(current):
            continue
        if current.is_initializer() and not current.is_graph_input():
            owner, name = current.graph, current.name
            if owner is not None and name is not None and owner.initializers.get(name) is current:
                del owner.initializers[name]
            continue
        node = current.producer()
        if node is None or node.graph is None or any(values_in_use(node.outputs)):
            continue
        inputs = list(node.inputs)
        node.graph.remove(node, safe=True)
        stack.extend(inputs)


def tensor_of(array: np.ndarray, name: str | None = None) -> ir.TensorProtocol:
    """An onnx-ir tensor holding `array`.

    ir.Tensor directly: ir.tensor's runtime protocol checks cost more than a fold on graphs of many small layers.
    """
    if array.dtype.kind in "OSU":  # strings
        return ir.tensor(array, name=name)
    return ir.Tensor(array, dtype=ir.DataType.from_numpy(array.dtype), name=name)


def constant_value(graph: ir.Graph, name: str, array) -> ir.Value:
    """Register `array` (a numpy array or an onnx-ir tensor) as a new initializer of `graph` called `name`."""
    tensor = tensor_of(array, name) if isinstance(array, np.ndarray) else array
    value = ir.Value(name=name, const_value=tensor)
    # The tensor carries dtype and shape; a value_info entry would only repeat them.
    value.type = None
    value.shape = None
    graph.register_initializer(value)
    return value


def replace_input(graph: ir.Graph, node: ir.Node, index: int, value: ir.Value) -> None:
    """Point input `index` of `node` at `value` (growing the input list if needed)."""
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    old = node.inputs[index]
    node.replace_input_with(index, value)
    remove_if_dead(graph, old)
