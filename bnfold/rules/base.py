"""What every rule shares: reading constant weights, writing folded ones, two-phase commits.

A rule's `prepare(ctx, node, params)` checks everything and computes the new
tensors without touching the graph; it returns a Commit that writes them. Moves
that fold into several nodes at once prepare all of them before committing any,
so a refusal anywhere leaves the graph exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnfold import fold_math
from bnfold.affine import Skip
from bnfold.graph import ConstantResolver, NameAuthority, TypeHints, constant_value, replace_input

QUANTIZATION_OPS = frozenset({"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"})

Commit = Callable[[], None]


def describe(node: ir.Node) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else f"{node.op_type} (unnamed)"


@dataclass
class FoldContext:
    """The state one run of the pass shares across rules."""

    resolver: ConstantResolver
    names: NameAuthority
    hints: TypeHints
    opset: int  # the default-domain opset of the graph or function being folded
    function_graphs: frozenset[ir.Graph] = frozenset()  # bodies that cannot hold initializers

    def weight(self, node: ir.Node, index: int, role: str) -> np.ndarray:
        """The constant array at input `index` of `node`; Skip when it is not one."""
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is None:
            raise Skip(f"{role} of {describe(node)} is missing")
        if self.resolver.is_overridable_initializer(value):
            raise Skip(f"{role} of {describe(node)} is a graph input (can be overridden at run time)")
        quantization = sorted(self.resolver.ops_behind(value) & QUANTIZATION_OPS)
        if quantization:
            raise Skip(f"{role} of {describe(node)} is quantized ({quantization[0]}); fold before quantizing")
        array = self.resolver.value_of(value)
        if array is None:
            raise Skip(f"{role} of {describe(node)} is not constant (computed at run time)")
        return array

    def optional_weight(self, node: ir.Node, index: int, role: str) -> np.ndarray | None:
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None
        return self.weight(node, index, role)

    def new_constant(self, user: ir.Node, hint: str, array: np.ndarray) -> ir.Value:
        """A new uniquely named constant for `user`: an initializer, or a Constant node in a function."""
        graph = user.graph
        name = self.names.fresh(hint)
        if graph not in self.function_graphs:
            return constant_value(graph, name, array)
        constant = ir.node("Constant", [], attributes={"value": ir.tensor(array, name=name)},
                           name=self.names.fresh(f"{hint}_constant"))
        constant.outputs[0].name = name
        graph.insert_before(user, constant)
        return constant.outputs[0]

    def write_input(self, node: ir.Node, index: int, array: np.ndarray, role: str) -> None:
        """Make input `index` of `node` the constant `array`.

        An initializer that only this input uses is updated in place (it keeps its
        name and position); anything shared or computed gets a new, uniquely named
        constant, so other users keep the original value.
        """
        old = node.inputs[index] if index < len(node.inputs) else None
        if old is not None and _exclusively_ours(old):
            old.const_value = ir.tensor(array, name=old.name)
            if old.shape is not None:
                old.shape = ir.Shape(array.shape)
            self.resolver.forget(old)
            return
        hint = f"{old.name}_bnfolded" if old is not None and old.name else f"{node.name or node.op_type}_{role}"
        replace_input(node.graph, node, index, self.new_constant(node, hint, array))

    def mark_gemm_broadcast(self, gemm: ir.Node) -> None:
        """Gemm before opset 7 broadcasts C only when told to."""
        if self.opset < 7:
            gemm.attributes["broadcast"] = ir.AttrInt64("broadcast", 1)


def _exclusively_ours(value: ir.Value) -> bool:
    return (value.is_initializer() and not value.is_graph_input() and not value.is_graph_output()
            and len(value.uses()) == 1 and value.graph is not None)


def rounded(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Round a float64 fold result once to the dtype of the tensor it replaces."""
    try:
        return fold_math.round_to(values, like.dtype)
    except fold_math.FoldOverflowError as error:
        raise Skip(str(error)) from None


def weight_and_bias_commit(ctx: FoldContext, node: ir.Node, weight_index: int, weight: np.ndarray,
                           bias_index: int, bias: np.ndarray, *, bias_role: str = "bias",
                           weight_role: str = "weight") -> Commit:
    """A Commit writing the bias first: that may free the weight of a second user (a Shape feeding the old bias)."""

    def commit() -> None:
        ctx.write_input(node, bias_index, bias, bias_role)
        ctx.write_input(node, weight_index, weight, weight_role)

    return commit
