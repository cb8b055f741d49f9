"""Following a channel axis through the nodes exporters put between a linear layer and its BN.

A per-channel map applies along one axis of a value. Walking from an affine node
back towards its producer, that axis moves through:

* transparent nodes, which change nothing: Identity, Dropout at inference (no mask
  used, no training_mode), a Cast to the type the value already has;
* Transpose: output axis a comes from input axis perm[a];
* Squeeze / Unsqueeze: the axis shifts past the axes removed or added (a channel on
  an added axis has nowhere to come from);
* Reshape / Flatten: output axis a comes from input axis b when both have the same
  size and the same product of the dims after them (row-major order keeps every
  element of the channel in place), proven from known shapes.

A mapping that cannot be proven refuses the move, with the reason. Transparent
nodes, and Transposes that cancel, are removed when a fold passes through them, and
so is a Transpose pair that the folded node sat between.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from bnfold import words
from bnfold.graph.editing import data_input, use_count
from bnfold.graph.node_attrs import float_attr, in_default_domain, int_attr, str_attr
from bnfold.graph.op_types import LAYOUT
from bnfold.graph.skip import Skip
from bnfold.words import describe


@dataclass
class Trace:
    """Where a walk from an affine node's data input ended: the producer, and its output's tracked axis."""

    producer: ir.Node | None
    axis: int | None  # None for a one-number map (every axis)
    passed: list[ir.Node] = field(default_factory=list)  # layout and transparent nodes, nearest first

    def beyond(self, further: Trace) -> Trace:
        """This walk continued by `further`, which started at the input of the node this one stopped at."""
        stopped_at = [self.producer] if self.producer is not None else []
        return Trace(further.producer, further.axis, [*self.passed, *stopped_at, *further.passed])

    @property
    def through(self) -> str:
        """' (through Squeeze 'sq', Transpose 't')' for the report, or ''."""
        kept = [node for node in self.passed if node.op_type in LAYOUT]
        return words.through(kept[::-1])


def trace_back(ctx, value: ir.Value, axis: int | None) -> Trace:
    """Walk from `value` back through layout and transparent nodes while each edge is used once."""
    passed: list[ir.Node] = []
    while True:
        node = value.producer()
        if node is None or not in_default_domain(node) or node.graph is None:
            return Trace(node, axis, passed)
        kind = layout_kind(ctx, node)
        if kind is None:
            return Trace(node, axis, passed)
        if value.is_graph_output() or use_count(value) != 1 or node.outputs[0] is not value:
            raise Skip(f"output of {describe(node)} is used elsewhere too")
        if axis is not None:
            axis = _axis_before(ctx, node, axis)
        passed.append(node)
        value = data_input(node)


def layout_kind(ctx, node: ir.Node) -> str | None:
    """ "transparent", "layout", or None for a node the walk stops at."""
    if node.op_type in LAYOUT and node.inputs and node.inputs[0] is not None:
        return "layout"
    return "transparent" if is_transparent(ctx, node) else None


def is_transparent(ctx, node: ir.Node) -> bool:
    """Identity; Dropout that only passes its input on at inference; a Cast to the type the value has."""
    if not in_default_domain(node) or not node.inputs or node.inputs[0] is None:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type == "Dropout":
        mask_used = len(node.outputs) > 1 and (use_count(node.outputs[1]) > 0 or node.outputs[1].is_graph_output())
        training = len(node.inputs) > 2 and node.inputs[2] is not None and not _constant_false(ctx, node.inputs[2])
        legacy_training = "is_test" in node.attributes and int_attr(node, "is_test", 0) == 0
        return not (mask_used or training or legacy_training)
    if node.op_type == "Cast":
        source = ctx.types.dtype(node.inputs[0])
        return source is not None and int_attr(node, "to", -1) == source.value
    return False


def _constant_false(ctx, value: ir.Value) -> bool:
    array = ctx.resolver.value_of(value)
    return array is not None and array.size == 1 and not bool(array.reshape(-1)[0])


def _axis_before(ctx, node: ir.Node, axis: int) -> int:
    """The input axis of `node` that its output axis `axis` comes from; Skip when that is not provable."""
    op = node.op_type
    if op not in LAYOUT:
        return axis
    if op == "Transpose":
        order = _permutation(ctx, node)
        if axis >= len(order):
            raise Skip(f"the permutation of {describe(node)} is unknown")
        return order[axis]
    if op in ("Squeeze", "Unsqueeze"):
        return _axis_through_axes(ctx, node, axis)
    return _axis_through_reshape(ctx, node, axis)


def axis_after(ctx, node: ir.Node, axis: int | None, params) -> int | None:
    """Folding forward: the output axis of a Transpose or Pad that input axis `axis` lands on (None: a
    one-number map). A Pad that copies values (edge, reflect, wrap) commutes with any per-channel map; one
    that fills with v, only with a map that keeps v (s·v + t = v: for v = 0, a pure scale). Neither may pad
    the channel axis."""
    if node.op_type == "Transpose":
        if axis is None:
            return None
        order = _permutation(ctx, node)
        if axis not in order:
            raise Skip(f"the permutation of {describe(node)} is unknown")
        return order.index(axis)
    mode, pads, fill = _pad_kind(ctx, node)
    if axis is not None and (pads[axis] != 0 or pads[axis + len(pads) // 2] != 0):
        raise Skip(f"{describe(node)} pads the channel axis {axis}")
    if mode == "constant" and not np.all(params.scale * fill + params.shift == fill):
        raise Skip(f"padding: {describe(node)} fills with {fill:g}, which the map would not keep")
    return axis


def _permutation(ctx, node: ir.Node) -> list[int]:
    """A Transpose's perm; without one, the reversal of its input's axes (the rank is asked for only then)."""
    perm = node.attributes.get("perm")
    if perm is not None:
        return [int(axis) for axis in perm.value]
    rank = ctx.types.rank(node.inputs[0])
    if not rank:
        raise Skip(f"the permutation of {describe(node)} is unknown")
    return list(reversed(range(rank)))


def _pad_kind(ctx, node: ir.Node) -> tuple[str, list[int], float]:
    """A Pad's mode, its pads for every axis, and its fill value; Skip when they are not constant."""
    mode = str_attr(node, "mode", "constant")
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise Skip(f"{describe(node)} pads in mode {mode!r}")
    if "pads" in node.attributes:  # opset < 11
        return mode, [int(p) for p in node.attributes["pads"].value], float_attr(node, "value", 0.0)
    pads = ctx.resolver.value_of(node.inputs[1]) if len(node.inputs) > 1 else None
    has_fill = len(node.inputs) > 2 and node.inputs[2] is not None
    fill = ctx.resolver.value_of(node.inputs[2]) if has_fill else np.zeros(1)
    if pads is None or fill is None or (len(node.inputs) > 3 and node.inputs[3] is not None):
        raise Skip(f"the pads of {describe(node)} are not constant")
    return mode, [int(p) for p in np.asarray(pads).reshape(-1)], float(np.asarray(fill).reshape(-1)[0])


def _axis_through_axes(ctx, node: ir.Node, axis: int) -> int:
    rank_in = ctx.types.rank(node.inputs[0])
    axes = _axes(ctx, node)
    if rank_in is None or axes is None:
        raise Skip(f"the axes or input rank of {describe(node)} are unknown, so the channel axis is too")
    if node.op_type == "Squeeze":
        kept = [a for a in range(rank_in) if a not in {a % rank_in for a in axes}]
        if axis >= len(kept):
            raise Skip(f"{describe(node)} does not keep axis {axis}")
        return kept[axis]
    rank_out = rank_in + len(axes)
    added = {a % rank_out for a in axes}
    if axis in added:
        raise Skip(f"the channel axis is one {describe(node)} adds")
    return [a for a in range(rank_out) if a not in added].index(axis)


def _axes(ctx, node: ir.Node) -> list[int] | None:
    if "axes" in node.attributes:
        return [int(a) for a in node.attributes["axes"].value]
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        array = ctx.resolver.value_of(node.inputs[1])
        return None if array is None else [int(a) for a in np.asarray(array).reshape(-1)]
    if node.op_type == "Squeeze":  # every axis of size 1
        shape = ctx.types.shape(node.inputs[0])
        if shape is not None and all(d is not None for d in shape):
            return [a for a, d in enumerate(shape) if d == 1]
    return None


def _axis_through_reshape(ctx, node: ir.Node, axis: int) -> int:
    before, after = ctx.types.shape(node.inputs[0]), ctx.types.shape(node.outputs[0])
    if before is None or after is None or axis >= len(after) or after[axis] is None:
        raise Skip(f"the shapes around {describe(node)} are unknown, so where the channel goes is too")
    inner = _product(after[axis + 1 :])
    for candidate, size in enumerate(before):
        if size == after[axis] and inner is not None and _product(before[candidate + 1 :]) == inner:
            return candidate
    raise Skip(f"{describe(node)} does not provably keep the channel axis as one axis")


def _product(dims) -> int | None:
    return None if any(d is None for d in dims) else math.prod(dims)


def remove_passed(trace: Trace) -> None:
    """Remove the transparent nodes of a walk, and Transpose pairs in it that cancel."""
    from bnfold.graph.editing import retire_node

    for node in trace.passed:
        if node.graph is None:
            continue
        if node.op_type not in LAYOUT:
            _retire_safely(node)
            continue
        source = data_input(node).producer()
        if source is not None and source in trace.passed and _pair_cancels(source, node):
            inner = data_input(source)
            if not inner.is_graph_input() and not inner.is_graph_output():
                retire_node(node, source.outputs[0])
                retire_node(source, inner)


def remove_cancelling_pair(trace: Trace, value: ir.Value) -> ir.Value:
    """Once the affine node between them is gone, a layout node of the walk and the one after it that undo it
    go too: a Transpose pair that cancels (flax's and Keras's `Transpose → BN → Transpose` on a rank-3 Dense
    output), or a Flatten/Reshape followed by a Reshape back to `Shape` of its own input (timm LeViT's
    `MatMul → Flatten → BN → Reshape(Shape(MatMul))`: regrouping dims and restoring them is the identity).
    Returns the value that now carries what `value` led to: the pair's output, or `value` itself."""
    from bnfold.graph.editing import retire_node

    first = value.producer()
    uses = list(value.uses())
    if first is None or first not in trace.passed or len(uses) != 1:
        return value
    second = uses[0].node
    inner = data_input(first)
    restores = _restores_shape_of(second, inner)
    if not (_pair_cancels(first, second) or (restores is not None and _regroups(first, second))):
        return value
    others = [use.node for use in inner.uses() if use.node is not first]
    if inner.is_graph_input() or inner.is_graph_output() or others not in ([], [restores]):
        return value
    retire_node(second, value)  # its dead Shape input goes with it
    retire_node(first, inner)
    return inner


def remove_cancelling_transposes(path: list[ir.Node]) -> None:
    """After a fold forward along `path` (its nodes in order): neighbouring Transposes on it that cancel go
    (tf2onnx without its optimizer puts an NHWC↔NCHW pair between a BN and the next Conv)."""
    from bnfold.graph.editing import bypass_node

    for first, second in itertools.pairwise(path):
        if not _pair_cancels(first, second) or second.outputs[0].is_graph_output():
            continue
        # Bypassed, not renamed: the value before the pair holds the map's input, not its output (the map
        # went downstream), so it keeps its own name rather than taking that of the pair's output.
        bypass_node(second, first.outputs[0])
        bypass_node(first, data_input(first))


def _retire_safely(node: ir.Node) -> None:
    from bnfold.graph.editing import retire_node

    data = node.inputs[0]
    if data is not None and not data.is_graph_input() and not data.is_graph_output():
        retire_node(node, data)


def restores_shape(trace: Trace, output: ir.Value) -> bool:
    """Whether the walk's last layout node (a Flatten or Reshape) is undone by the only reader of `output`, the
    affine map's output: Reshape(·, Shape(the walk's value before that node))."""
    if not trace.passed or trace.passed[0].op_type not in ("Flatten", "Reshape"):
        return False
    uses = list(output.uses())
    if len(uses) != 1 or output.is_graph_output():
        return False
    return _restores_shape_of(uses[0].node, data_input(trace.passed[0])) is not None


def _restores_shape_of(node: ir.Node, value: ir.Value) -> ir.Node | None:
    """The Shape node when `node` is Reshape(·, Shape(value)) (the whole shape: no start/end), else None."""
    if node.op_type != "Reshape" or not in_default_domain(node) or len(node.inputs) < 2:
        return None
    shape = node.inputs[1].producer() if node.inputs[1] is not None else None
    if shape is None or shape.op_type != "Shape" or not in_default_domain(shape) or shape.inputs[0] is not value:
        return None
    return None if "start" in shape.attributes or "end" in shape.attributes else shape


def _regroups(first: ir.Node, second: ir.Node) -> bool:
    """`first` is a Flatten or Reshape that only regroups dims, and only `second` reads its output."""
    return first.op_type in ("Flatten", "Reshape") and in_default_domain(first) and _linked_alone(first, second)


def _linked_alone(first: ir.Node, second: ir.Node) -> bool:
    """`second` reads `first`'s output as its data, in the same graph, and nothing else does (nor a graph output)."""
    between = first.outputs[0]
    return (
        first.graph is not None
        and second.graph is first.graph
        and second.inputs[0] is between
        and not between.is_graph_output()
        and use_count(between) == 1
    )


def _pair_cancels(first: ir.Node, second: ir.Node) -> bool:
    """`first` → `second`: two Transposes of one graph that undo each other, joined by an edge nothing else
    reads (and no graph output)."""
    return (
        first.op_type == second.op_type == "Transpose"
        and in_default_domain(first)
        and in_default_domain(second)
        and _linked_alone(first, second)
        and _cancel(first, second)
    )


def _cancel(first: ir.Node, second: ir.Node) -> bool:
    a, b = first.attributes.get("perm"), second.attributes.get("perm")
    if a is None or b is None or len(a.value) != len(b.value):
        return False
    return [list(a.value)[i] for i in b.value] == list(range(len(a.value)))
