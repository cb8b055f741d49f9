"""The state one run of the pass shares with its moves and rules: reading constant weights, writing folded ones.

A FoldContext is made by the pass (fold_pass.py) for each graph or function it folds;
the moves, the rules, the reparameterization and the collapse read constants and
write their results through it, so an initializer shared with another node is never
changed in place, and a large folded weight is recomputed while the output is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from bnfold.graph.constant_eval import ConstantResolver, constant_input
from bnfold.graph.editing import constant_value, graph_of, replace_input, tensor_of, use_count
from bnfold.graph.fresh_names import NameAuthority
from bnfold.graph.skip import Skip
from bnfold.graph.value_types import ValueTypes
from bnfold.words import describe


@dataclass
class FoldContext:
    """The state one run of the pass shares across rules."""

    resolver: ConstantResolver
    names: NameAuthority
    types: ValueTypes
    opset: int  # the default-domain opset of the graph or function being folded
    function_graphs: frozenset[ir.Graph] = frozenset()  # bodies that cannot hold initializers
    refused: Mapping[str, str] = field(default_factory=dict)  # Cast sandwiches a check refused: key -> reason
    # Mul/Add/Sub/Div of a pattern onnxruntime fuses (folding/runtime_fusions.py) -> why it stays
    runtime_fused: Mapping[ir.Node, str] = field(default_factory=dict)

    def kernel(self, node: ir.Node, index: int = 1, role: str = "weight") -> np.ndarray:
        """A convolution kernel [C, C', k…] (rank ≥ 3) at input `index`; Skip otherwise."""
        array = self.weight(node, index, role)
        if array.ndim < 3:
            raise Skip(f"{role} of {describe(node)} has rank {array.ndim}, expected at least 3")
        return array

    def matrix(self, node: ir.Node, index: int = 1, role: str = "weight") -> np.ndarray:
        """A 2-D weight at input `index`; Skip otherwise."""
        array = self.weight(node, index, role)
        if array.ndim != 2:
            raise Skip(f"{role} of {describe(node)} has rank {array.ndim}, expected 2")
        return array

    def weight(self, node: ir.Node, index: int, role: str) -> np.ndarray:
        """The constant array at input `index` of `node`; Skip when it is not one."""
        value = node.inputs[index] if index < len(node.inputs) else None
        return constant_input(self.resolver, value, f"{role} of {describe(node)}", refuse_quantized=True)

    def bias(self, node: ir.Node, index: int, channels: int) -> np.ndarray | None:
        """The optional constant bias at input `index`, one value per output channel; Skip otherwise."""
        bias = self.optional_weight(node, index, "bias")
        if bias is not None and bias.shape != (channels,):
            raise Skip(f"bias of {describe(node)} has shape {bias.shape}, expected ({channels},)")
        return bias

    def optional_weight(self, node: ir.Node, index: int, role: str) -> np.ndarray | None:
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None
        return self.weight(node, index, role)

    def new_constant(self, user: ir.Node, hint: str, array: np.ndarray) -> ir.Value:
        """A new uniquely named constant for `user`: an initializer, or a Constant node in a function."""
        graph = graph_of(user)
        name = self.names.fresh(hint)
        if graph not in self.function_graphs:
            return constant_value(graph, name, array)
        constant = ir.node(
            "Constant", [], attributes={"value": tensor_of(array, name)}, name=self.names.fresh(f"{hint}_constant")
        )
        constant.outputs[0].name = name
        graph.insert_before(user, constant)
        return constant.outputs[0]

    def write_input(
        self,
        node: ir.Node,
        index: int,
        array: np.ndarray | None,
        role: str,
        recompute: Callable[[], np.ndarray] | None = None,
        like: np.ndarray | None = None,
    ) -> None:
        """Make input `index` of `node` the constant `array`.

        An initializer that only this input uses is updated in place (it keeps its
        name and position); anything shared or computed gets a new, uniquely named
        constant, so other users keep the original value. With `recompute`, a large
        array replacing a memory-mapped tensor is not kept: it is recomputed when
        the output is written, so memory stays bounded on models of any size.
        `array` may be None where `defers` says so, with `like` giving its dtype and
        shape; where it does not, `recompute` computes it now.
        """
        old = node.inputs[index] if index < len(node.inputs) else None
        lazy = recompute if recompute is not None and self.defers(node, index) else None
        if array is None and lazy is None:
            if recompute is None:
                raise AssertionError(f"no value for input {index} of {describe(node)}")
            array = recompute()
        stand_in = array if array is not None else like  # dtype and shape of the new value
        if stand_in is None:
            raise AssertionError(f"neither a value nor its dtype and shape for input {index} of {describe(node)}")
        if old is not None and _exclusively_ours(old):
            old.const_value = _tensor(stand_in, old.name or "", lazy)
            if old.shape is not None:
                old.shape = ir.Shape(stand_in.shape)
            self.resolver.forget(old)
            return
        hint = f"{old.name}_bnfolded" if old is not None and old.name else f"{node.name or node.op_type}_{role}"
        if lazy is not None:
            name = self.names.fresh(hint)
            new_value = constant_value(graph_of(node), name, _tensor(stand_in, name, lazy))
        else:
            new_value = self.new_constant(node, hint, stand_in)
        replace_input(graph_of(node), node, index, new_value)

    def defers(self, node: ir.Node, index: int) -> bool:
        """Whether a new value for input `index` is computed while the output is written, not now.

        So it is for large tensors that replace memory-mapped ones (outside functions,
        whose constants are inline Constant nodes).
        """
        old = node.inputs[index] if index < len(node.inputs) else None
        return (
            old is not None
            and isinstance(old.const_value, ir.ExternalTensor)
            and old.const_value.nbytes >= LAZY_TENSOR_BYTES
            and node.graph not in self.function_graphs
        )

    def mark_gemm_broadcast(self, gemm: ir.Node) -> None:
        """Gemm before opset 7 broadcasts C only when told to."""
        if self.opset < 7:
            gemm.attributes["broadcast"] = ir.AttrInt64("broadcast", 1)


# Folded tensors at least this large, replacing memory-mapped ones, are recomputed at write time.
LAZY_TENSOR_BYTES = 1 << 20


def _tensor(array: np.ndarray, name: str, recompute: Callable[[], np.ndarray] | None):
    if recompute is None:
        return tensor_of(array, name)
    return ir.LazyTensor(
        lambda: tensor_of(recompute()),
        dtype=ir.DataType.from_numpy(array.dtype),
        shape=ir.Shape(array.shape),
        name=name,
    )


def _exclusively_ours(value: ir.Value) -> bool:
    return (
        value.is_initializer()
        and not value.is_graph_input()
        and not value.is_graph_output()
        and use_count(value) == 1
        and value.graph is not None
    )
