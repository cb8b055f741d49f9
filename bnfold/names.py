"""Fresh names for the values and nodes a fold adds."""

from __future__ import annotations

import onnx_ir as ir

from bnfold.ir_walk import ir_graphs


class NameAuthority:
    """Hands out names no value or node of the model uses yet."""

    def __init__(self, model: ir.Model) -> None:
        self._taken: set[str] = set()
        for graph, _ in ir_graphs(model):
            self._taken.update(v.name for v in graph.inputs if v.name)
            self._taken.update(v.name for v in graph.initializers.values() if v.name)
            for node in graph:
                if node.name:
                    self._taken.add(node.name)
                self._taken.update(v.name for v in node.outputs if v.name)

    def fresh(self, hint: str) -> str:
        name, counter = hint, 1
        while name in self._taken:
            name = f"{hint}_{counter}"
            counter += 1
        self._taken.add(name)
        return name
