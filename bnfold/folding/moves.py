"""The ways an affine node (a BN, or a per-channel Mul/Add/Sub/Div) disappears into linear layers.

backward   X → [Conv|ConvTranspose|Gemm|MatMul] → affine        the producer absorbs (s, t)
concat     [producers] → Concat(axis 1) → affine                   each producer absorbs its slice
forward    affine → [Conv|Gemm|MatMul] (all consumers)             the consumers absorb (s, t);
           affine → Flatten/Reshape → [Gemm|MatMul]                 channel c's block of features too

Every move prepares all the nodes it changes before committing any of them, and
raises Skip with the reason when it cannot be done exactly; the graph is then
untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import onnx_ir as ir

from bnfold import words
from bnfold.folding.affine import AffineParams
from bnfold.folding.cast_sandwiches import find_sandwich, remove_narrowing, remove_widening, set_path_dtype
from bnfold.folding.context import FoldContext
from bnfold.folding.layout import (
    axis_after,
    is_transparent,
    remove_cancelling_pair,
    remove_cancelling_transposes,
    remove_passed,
    restores_shape,
    trace_back,
)
from bnfold.folding.rules import CONSUMER_RULES, PRODUCER_RULES, matmul
from bnfold.folding.rules.base import Commit
from bnfold.graph.editing import bypass_node, retire_node, use_count
from bnfold.graph.node_attrs import in_default_domain, int_attr
from bnfold.graph.op_types import (
    CONSUMER_NAMES,
    FLATTENING,
    FORWARD_LAYOUT,
    PRODUCER_NAMES,
    QUANTIZATION,
    QUANTIZED_PRODUCERS,
)
from bnfold.graph.skip import Skip
from bnfold.words import describe


@dataclass(frozen=True)
class AffineNode:
    """A node computing y = s·x + t along one axis of x (its input `data_index`): the channel axis 1 for a BN."""

    node: ir.Node
    data_index: int
    params: AffineParams
    axis: int | None = 1  # None: one number for every element

    @property
    def data(self) -> ir.Value:
        value = self.node.inputs[self.data_index]
        if value is None:
            raise Skip("its data input is missing")
        return value

    @property
    def output(self) -> ir.Value:
        return self.node.outputs[0]


@dataclass(frozen=True)
class Folded:
    into: str  # e.g. "Conv 'conv1'", "Conv 'a'[0:64], Conv 'b'[64:128]"
    pattern: str  # "backward", "concat", "forward"
    sites: tuple[ir.Value, ...] = ()  # the values whose computation changed: what the check compares
    # values on the way that now hold something else (a layout node's output, before the BN's scale was
    # folded upstream of it): what an earlier fold recorded there is now seen at `sites`
    superseded: tuple[ir.Value, ...] = ()
    sandwich: str | None = None  # the key of the Cast sandwich it folded out of (folding/cast_sandwiches.py), if any


def fold_backward(ctx: FoldContext, affine: AffineNode) -> Folded:
    """Fold into the producer of the affine node's input (or the producers behind a Concat), also through
    layout and transparent nodes (layout.py) when the channel axis provably lands on the producer's features."""
    trace = trace_back(ctx, affine.data, affine.axis)
    sandwich = find_sandwich(ctx, trace.producer, affine.output)
    if sandwich is not None:
        trace = trace.beyond(trace_back(ctx, sandwich.source, trace.axis))
    producer = trace.producer
    if producer is not None and producer.op_type in QUANTIZATION | QUANTIZED_PRODUCERS:
        raise Skip(f"its input comes from {describe(producer)}, a quantized op; fold before quantizing")
    if producer is not None and producer.op_type == "Concat" and in_default_domain(producer) and not trace.passed:
        return _fold_into_concat(ctx, affine, producer)
    user = trace.passed[-1] if trace.passed else affine.node
    bias_add = _bias_add(ctx, producer, user, trace)
    # a Shape reading the folded value is no reader of its values when the path is undone after the map
    # (layout.remove_cancelling_pair: `Flatten → BN → Reshape(Shape(·))`)
    shapes_read = restores_shape(trace, affine.output)
    if bias_add is not None:  # its output changes too: nothing but the path to the map may read it
        _read_only_by_path(bias_add, _output_read_by(user, bias_add), shapes_read)
        user, producer = bias_add, bias_add_producer(ctx, bias_add)
    output, producer = _foldable_producer(user, _output_read_by(user, producer), producer, shapes_read)
    _check_feature_axis(ctx, producer, trace.axis)
    if bias_add is not None:
        commit = matmul.prepare(ctx, producer, affine.params, bias_add)
    else:
        commit = PRODUCER_RULES[producer.op_type].prepare(ctx, producer, affine.params)
    target = words.backward_target(producer, bias_add, trace.through)
    on_the_way = [output, *(node.outputs[0] for node in trace.passed[1:])]
    commit()
    if sandwich is not None:
        set_path_dtype(sandwich, [*on_the_way, affine.output])
        remove_widening(sandwich)
        trace.passed.remove(sandwich.widen)
    remove_passed(trace)
    data = affine.data  # after the transparent nodes went, what now feeds the affine node
    retire_node(affine.node, data)
    if sandwich is not None:
        key, description = sandwich.key, sandwich.describe()
        data = remove_narrowing(sandwich)
        return Folded(f"{target} ({description})", "cast-sandwich", (data,), _changed(on_the_way, data), key)
    site = remove_cancelling_pair(trace, data)
    return Folded(target, "backward", (site,), _changed(on_the_way, site))


def _changed(on_the_way: Sequence[ir.Value], site: ir.Value) -> tuple[ir.Value, ...]:
    return tuple(value for value in on_the_way if value is not site)


def _output_read_by(user: ir.Node, producer: ir.Node | None) -> ir.Value | None:
    """The output of `producer` that `user` reads."""
    if producer is None:
        return None
    return next((value for value in user.inputs if value is not None and value.producer() is producer), None)


def _bias_add(ctx: FoldContext, producer: ir.Node | None, user: ir.Node, trace) -> ir.Node | None:
    """An Add of a constant right after a MatMul, which serves as that MatMul's bias (rank > 2: no Gemm)."""
    if producer is None or producer.op_type != "Add" or not in_default_domain(producer) or len(producer.inputs) != 2:
        return None
    constants = [ctx.resolver.value_of(value) for value in producer.inputs]
    if (constants[0] is None) == (constants[1] is None):
        return None
    source = bias_add_producer(ctx, producer)
    if source is None or source.op_type != "MatMul" or not in_default_domain(source):
        return None
    if matmul.output_rank(ctx, source) in (None, 2):
        return None  # rank 2: the Add folds into the MatMul itself (a Gemm) first
    return producer


def bias_add_producer(ctx: FoldContext, add: ir.Node) -> ir.Node | None:
    """The producer of the Add's computed input (its bias may come from a node too: an exporter's Identity)."""
    data = next((v for v in add.inputs if v is not None and ctx.resolver.value_of(v) is None), None)
    return None if data is None else data.producer()


def _check_feature_axis(ctx: FoldContext, producer: ir.Node, axis: int | None) -> None:
    """The channel axis must be the one the producer's output features run along (Conv: 1; Gemm/MatMul: last)."""
    if axis is None:
        return
    feature = PRODUCER_RULES[producer.op_type].feature_axis(ctx, producer)
    if feature is None:
        raise Skip(f"rank of the output of {describe(producer)} is unknown")
    if axis != feature:
        raise Skip(
            f"it runs along axis {axis} of the output of {describe(producer)}, whose features run along axis {feature}"
        )


def _foldable_producer(
    user: ir.Node, value: ir.Value | None, producer: ir.Node | None, shapes_read: bool = False
) -> tuple[ir.Value, ir.Node]:
    """`value` must come from a rule's producer, in the same graph, and feed nothing but `user` (and, with
    `shapes_read`, Shape nodes): (value, producer)."""
    if value is None or producer is None or not in_default_domain(producer) or producer.op_type not in PRODUCER_RULES:
        raise Skip(f"no {PRODUCER_NAMES} before it")
    if producer.graph is not user.graph:
        raise Skip(f"{describe(producer)} is in an outer graph")
    _read_only_by_path(producer, value, shapes_read)
    return value, producer


def _read_only_by_path(node: ir.Node, value: ir.Value | None, shapes_read: bool = False) -> None:
    """A value a fold changes must feed the fold's path alone: no other consumer (but, with `shapes_read`, a
    Shape: a fold changes no shape) and no graph output."""
    if value is None:
        raise Skip(f"no output of {describe(node)} on the path")
    if value.is_graph_output():
        raise Skip(f"output of {describe(node)} is also a graph output")
    consumers = sum(
        not (shapes_read and use.node.op_type == "Shape" and in_default_domain(use.node)) for use in value.uses()
    )
    if consumers > 1:
        raise Skip(f"output of {describe(node)} has {consumers} consumers")


def _fold_into_concat(ctx: FoldContext, affine: AffineNode, concat: ir.Node) -> Folded:
    data = affine.data
    if data.is_graph_output() or use_count(data) > 1:
        raise Skip(f"output of {describe(concat)} is used elsewhere too")
    axis = int_attr(concat, "axis", 1)
    rank = ctx.types.rank(data) if axis < 0 else None
    if rank is not None:
        axis += rank
    if axis != 1:
        raise Skip(f"{describe(concat)} joins along axis {axis}, not the channel axis 1")
    commits: list[Commit] = []
    targets: list[str] = []
    start = 0
    for given in concat.inputs:
        try:
            _, producer = _foldable_producer(concat, given, given.producer() if given is not None else None)
        except Skip as skip:
            raise Skip(f"Concat input '{given.name if given is not None else ''}': {skip.reason}") from None
        rule = PRODUCER_RULES[producer.op_type]
        stop = start + rule.output_channels(ctx, producer)
        commits.append(rule.prepare(ctx, producer, affine.params.sliced(start, stop)))
        targets.append(words.concat_slice(producer, start, stop))
        start = stop
    if affine.params.channels not in (1, start):
        raise Skip(f"{describe(concat)} joins {start} channels, the affine map has {affine.params.channels}")
    for commit in commits:
        commit()
    retire_node(affine.node, data)
    # each slice's producer output now holds its slice of the map's output: an earlier fold seen there is seen at
    # the Concat's output now
    joined = tuple(value for value in concat.inputs if value is not None and value is not data)
    return Folded(", ".join(targets), "concat", (data,), joined)


def fold_forward(ctx: FoldContext, affine: AffineNode) -> Folded:
    """Fold into every consumer of the affine node's output; all of them must take it."""
    commit, into, sites = prepare_forward(ctx, affine)
    commit()
    bypass_node(affine.node, affine.data)
    return Folded(into, "forward", sites)


def prepare_forward(ctx: FoldContext, affine: AffineNode) -> tuple[Commit, str, tuple[ir.Value, ...]]:
    """Check that every consumer takes the affine map; the Commit changes their weights (not the affine node).

    Also returns what they take it into, and their outputs (the values the fold changes).
    """
    output = affine.output
    if output.is_graph_output():
        raise Skip("its output is a graph output")
    uses = list(output.uses())
    if not uses:
        raise Skip("its output is not used")
    commits: list[Commit] = []
    targets: list[str] = []
    sites: list[ir.Value] = []
    paths: list[list[ir.Node]] = []
    for use in uses:
        commit, target, site, path = _prepare_consumer(ctx, affine, use.node, use.idx)
        commits.append(commit)
        targets.append(target)
        sites.append(site)
        paths.append(path)

    def commit_all() -> None:
        for commit in commits:
            commit()
        for path in paths:
            remove_cancelling_transposes(path)

    return commit_all, ", ".join(targets), tuple(sites)


def _prepare_consumer(ctx: FoldContext, affine: AffineNode, consumer: ir.Node, index: int):
    params, axis, path = affine.params, affine.axis, []
    consumer, index = _past_transparent(ctx, consumer, index)
    while index == 0 and consumer.op_type in FORWARD_LAYOUT and in_default_domain(consumer):
        axis = axis_after(ctx, consumer, axis, params)
        path.append(consumer)
        consumer, index = _past_transparent(ctx, *_only_consumer(consumer))
    if axis not in (1, None):
        raise Skip(f"it runs along axis {axis}; a consumer can take a map along axis 1 only")
    if consumer.op_type in FLATTENING and index == 0 and in_default_domain(consumer) and not path:
        params = params.repeated(_features_per_channel(ctx, affine, consumer))
        path.append(consumer)
        consumer, index = _past_transparent(ctx, *_only_consumer(consumer))
    through = words.through(path)
    rule = CONSUMER_RULES.get(consumer.op_type) if in_default_domain(consumer) else None
    if rule is None:
        raise Skip(f"its output feeds {describe(consumer)}, not a {CONSUMER_NAMES}")
    if index != 0:
        raise Skip(f"its output is input {index} of {describe(consumer)}, not the data input")
    target = describe(consumer)
    return rule.prepare(ctx, consumer, params), target + through, consumer.outputs[0], path


def _features_per_channel(ctx: FoldContext, affine: AffineNode, flatten: ir.Node) -> int:
    """How many consecutive features each channel becomes, when [N, C, D…] is flattened to [N, C·ΠD]."""
    shape = ctx.types.shape(affine.data)
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
        raise Skip(f"the shape behind {describe(flatten)} is unknown, so the channel blocks are too")
    block = math.prod(shape[2:])
    if flatten.op_type == "Flatten":
        axis = int_attr(flatten, "axis", 1)
        if axis < 0:
            axis += len(shape)
        if axis != 1:
            raise Skip(f"{describe(flatten)} flattens from axis {axis}, not 1")
        return block
    out_shape = ctx.types.shape(flatten.outputs[0])
    if out_shape is None or len(out_shape) != 2 or out_shape[1] != shape[1] * block:
        raise Skip(f"{describe(flatten)} does not provably keep each channel a contiguous block of features")
    return block


def _past_transparent(ctx: FoldContext, consumer: ir.Node, index: int) -> tuple[ir.Node, int]:
    """The node after any transparent nodes (Identity, inference Dropout, same-type Cast) from `consumer` on."""
    while index == 0 and is_transparent(ctx, consumer):
        consumer, index = _only_consumer(consumer)
    return consumer, index


def _only_consumer(node: ir.Node) -> tuple[ir.Node, int]:
    output = node.outputs[0]
    uses = list(output.uses())
    if output.is_graph_output():
        raise Skip(f"output of {describe(node)} is a graph output")
    if len(uses) != 1:
        raise Skip(f"output of {describe(node)} has {len(uses)} consumers")
    return uses[0].node, uses[0].idx
