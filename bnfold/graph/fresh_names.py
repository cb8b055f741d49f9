"""Fresh names for the values and nodes a fold adds."""

from __future__ import annotations

import onnx_ir as ir

from bnfold.graph.ir_walk import ir_graphs


class NameAuthority:
    """Hands out names no value or node of the model uses yet."""

    def __init__(self, model: ir.Model) -> None:
        self._taken: set[str | None] = set()
        self._next: dict[str, int] = {}  # hint -> the first counter not tried yet
        for graph, _ in ir_graphs(model):
            self._taken.update(graph.initializers)  # keyed by name
            self._taken.update(v.name for v in graph.inputs)
            self._taken.update(node.name for node in graph)
            self._taken.update(v.name for node in graph for v in node.outputs)

    def fresh(self, hint: str) -> str:
        """`hint`, or `hint_1`, `hint_2`, … whichever is free first; each hint's count goes on from where it
        stopped, so a weight shared by many folded nodes costs what unique ones cost."""
        counter = self._next.get(hint, 0)
        name = hint if counter == 0 else f"{hint}_{counter}"
        while name in self._taken:
            counter += 1
            name = f"{hint}_{counter}"
        self._next[hint] = counter + 1
        self._taken.add(name)
        return name
