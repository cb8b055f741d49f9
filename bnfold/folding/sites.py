"""Sites, as the pass knows them: the values of the main graph whose computation a fold changed.

`SiteLocator` names them for each fold: a folded BN's output, now computed by its
producer; the outputs of the consumers a BN folded forward into; the output of a
collapsed chain. A fold inside an If/Loop/Scan body or a function body is seen
through the outputs of the main-graph node that holds that body or calls that
function. The check compares the original and the folded model there (check/).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import onnx_ir as ir

from bnfold.graph.ir_walk import attributes_of, subgraphs
from bnfold.report import Site

Holder = tuple[ir.Node, tuple[str, bool] | None]  # a main-graph node, and (If condition, branch) when direct


class SiteLocator:
    """Turns the values a fold changed (in any graph of `model`) into sites of the main graph."""

    def __init__(self, model: ir.Model) -> None:
        self.main = model.graph
        self._holders: dict[ir.Graph, list[Holder]] | None = None
        self._model = model

    def __call__(self, values: Iterable[ir.Value], graph: ir.Graph, bn: str | None) -> list[Site]:
        values = list(values)
        if not values:
            return []
        if graph is self.main:
            names = [value.name for value in values if _produced_in(value, graph) and value.name]
            return [Site(name, bn) for name in dict.fromkeys(names)]
        if self._holders is None:
            self._holders = holders(self._model)
        return [
            Site(output.name, bn, branch)
            for node, branch in self._holders.get(graph, [])
            for output in node.outputs
            if output.name
        ]


def _produced_in(value: ir.Value, graph: ir.Graph) -> bool:
    producer = value.producer()
    return producer is not None and producer.graph is graph


def holders(model: ir.Model) -> dict[ir.Graph, list[Holder]]:
    """For every subgraph and function body: the main-graph nodes that hold or call it."""
    found: dict[ir.Graph, list[Holder]] = defaultdict(list)
    functions = {function.identifier(): function for function in model.functions.values()}
    for node in model.graph:
        for attribute in attributes_of(node):
            for body, branch in _bodies(node, attribute):
                for graph in (body, *subgraphs(body)):
                    found[graph].append((node, branch if graph is body else None))
        for function in _functions_called(node, functions):
            for graph in (function.graph, *subgraphs(function.graph)):
                found[graph].append((node, None))
    return found


def _bodies(node: ir.Node, attribute: ir.Attr) -> list[tuple[ir.Graph, tuple[str, bool] | None]]:
    if attribute.is_ref():
        return []
    if attribute.type == ir.AttributeType.GRAPH:
        branch = None
        condition = node.inputs[0] if node.inputs else None
        if node.op_type == "If" and attribute.name in ("then_branch", "else_branch") and condition is not None:
            branch = (condition.name or "", attribute.name == "then_branch")
        return [(attribute.value, branch)]
    if attribute.type == ir.AttributeType.GRAPHS:
        return [(graph, None) for graph in attribute.value]
    return []


def _functions_called(node: ir.Node, functions: dict) -> list[ir.Function]:
    """The model-local functions `node` calls, directly, inside its subgraphs, or through other functions."""
    called: dict[tuple, ir.Function] = {}
    pending = [node]
    while pending:
        current = pending.pop()
        for attribute in attributes_of(current):
            for body, _ in _bodies(current, attribute):
                pending.extend(body)
        function = functions.get((current.domain, current.op_type, current.overload))
        if function is not None and function.identifier() not in called:
            called[function.identifier()] = function
            pending.extend(function.graph)
    return list(called.values())
