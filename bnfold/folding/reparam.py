"""Reparameterizable branches: linear branches on one input, summed, become one Conv.

RepVGG, MobileOne, ACNet and RepConv blocks are trained as

    Y = Conv_a(X) + Conv_b(X) + … + BN(X)  [+ X]          (Add/Sum/Sub nodes, in any tree)

and, with every Conv → BN already folded, compute one Conv of X. A Sub subtracts its
second operand's branches (FastViT's RepMixer: X + γ·(mixer(X) − BN(X)), where the
per-channel γ folds into the merged mixer and the outer sum merges next). Preconditions:

* every leaf of the Add/Sum/Sub tree is a branch on the same value X: a Conv reading X
  (constant weights and bias), a BN of X that no other move took (its frozen map, one
  scale per channel), or X itself; every branch output and inner sum feeds only its
  parent in the tree; at least one Conv and at least two branches;
* the Convs agree on group, strides and dilations, their auto_pad is NOTSET or
  VALID, their weights share dtype and [Cout, Cin/group];
* one Conv's kernel covers the others' (per axis the largest size), so the merged
  Conv costs what that branch alone did; every kernel fits it at the offset its
  padding fixes. A Conv reads input position o·stride − pad_begin + dilation·j, so
  with P the largest pad_begin it sits at (P − pad_begin)/dilation, a whole number,
  and pad_begin + pad_end − dilation·(size − 1) must be the same for every branch (the
  same output size for every input size);
* an identity branch (BN(X) or X) is a 1×…×1 kernel without padding: it needs stride
  1 and Cout = Cin, and puts s[c] (1 for X) at tap (c, c mod Cin/group);
* a constant leaf (timm's `0 + BN(X)` when a block has no scale branch) is one number,
  or one per channel on axis 1: it adds to the bias.

The merged Conv: kernel Σ ± of the placed kernels and identity taps, bias Σ ± of the
biases, BN shifts and constants (− for a branch a Sub subtracts: negation is exact),
computed in float64 and rounded once to the weights' dtype; pads (P, P_end); it takes
over the tree's output. It costs what its largest branch costs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnfold.folding import fold_math
from bnfold.folding.affine import AffineParams
from bnfold.folding.context import FoldContext
from bnfold.folding.rules.base import rounded
from bnfold.graph.editing import remove_if_dead, take_over_output, use_count
from bnfold.graph.node_attrs import in_default_domain, int_attr, str_attr
from bnfold.graph.op_types import BRANCH_SUMS
from bnfold.graph.skip import Skip
from bnfold.words import describe


@dataclass(frozen=True)
class Merged:
    target: ir.Node  # the Conv that became the merged one
    output: ir.Value  # its output, now the tree's
    bns: tuple[ir.Node, ...]  # identity branches that were BNs
    removed: tuple[ir.Value, ...]  # values that no longer exist (other branches' outputs, inner sums)


@dataclass(frozen=True)
class _Geometry:
    size: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]


def is_root(node: ir.Node) -> bool:
    """An Add/Sum/Sub whose output does not feed only another of them (which would be the tree's root)."""
    if node.op_type not in BRANCH_SUMS or not in_default_domain(node):
        return False
    output = node.outputs[0]
    uses = list(output.uses())
    return output.is_graph_output() or len(uses) != 1 or not _is_sum(uses[0].node, node.graph)


@dataclass(frozen=True)
class Tree:
    root: ir.Node
    leaves: list[ir.Value]
    signs: list[float]  # +1, or −1 for a branch that a Sub subtracts
    sums: list[ir.Node]


def find_trees(root: ir.Node, constant_of: Callable[[ir.Value], np.ndarray | None]) -> list[Tree]:
    """The tree at `root`, or, when its branches read different inputs, its subtrees (constants read none)."""
    tree = _tree(root)
    if len({_source(leaf) for leaf in tree.leaves if constant_of(leaf) is None}) == 1:
        return [tree]
    return [
        found
        for node in tree.sums
        if node is not root and node in _children(root)
        for found in find_trees(node, constant_of)
    ]


@dataclass(frozen=True)
class _Branches:
    """A tree's leaves by kind, each with its sign."""

    convs: list[tuple[ir.Node, float]]
    identities: list[tuple[ir.Node | None, AffineParams | None, float]]  # a BN of X and its map, or X itself
    constants: list[tuple[ir.Value, float]]


def merge(
    ctx: FoldContext, tree: Tree, bn_params: Callable[[ir.Node], AffineParams | None], bn_only: bool = False
) -> Merged | None:
    """Merge the branches; None when the tree is no reparameterizable block, Skip when it is one that cannot be.

    With `bn_only`, a constant in the sum is taken only beside a BN branch: Conv(X) + c alone is a plain
    per-channel Add next to a Conv, which `--bn-only` leaves."""
    branches = _branches(ctx, tree, bn_params)
    if branches is None or (bn_only and branches.constants and not any(bn for bn, _, _ in branches.identities)):
        return None
    _check_single_uses(tree)
    convs = [conv for conv, _ in branches.convs]
    kernels = [ctx.kernel(conv) for conv in convs]
    _check_alike(convs, kernels, has_identity=bool(branches.identities))
    size = tuple(max(kernel.shape[2 + axis] for kernel in kernels) for axis in range(kernels[0].ndim - 2))
    if all(kernel.shape[2:] != size for kernel in kernels):
        sizes = " and ".join(dict.fromkeys("x".join(map(str, kernel.shape[2:])) for kernel in kernels))
        raise Skip(f"no branch's kernel covers the others ({sizes}): the merged kernel would cost more than they do")
    geometries = [_geometry(conv, kernel) for conv, kernel in zip(convs, kernels, strict=True)]
    if branches.identities:
        geometries.append(_Geometry((1,) * len(size), (0,) * len(size), (0,) * len(size)))
    begin, end, offsets = _placement(geometries, _ints(convs[0], "dilations", 1, len(size)), size)
    shape = (*kernels[0].shape[:2], *size)
    scales = _identity_maps(branches, shape[0])
    placed = [
        (sign * kernel, offset)
        for (_, sign), kernel, offset in zip(branches.convs, kernels, offsets[: len(kernels)], strict=True)
    ]
    kernel = fold_math.merged_kernel(shape, placed, [(scale, offsets[-1]) for scale, _ in scales])
    bias = sum((sign * _bias(ctx, conv, shape[0]) for conv, sign in branches.convs), np.zeros(shape[0]))
    bias = bias + sum((shift for _, shift in scales), np.zeros(shape[0]))
    for leaf, sign in branches.constants:
        bias = bias + sign * _constant_bias(ctx, leaf, shape)
    target = next(conv for conv, kernel in zip(convs, kernels, strict=True) if kernel.shape[2:] == size)
    ctx.write_input(target, 2, rounded(bias, kernels[0]), "bias")
    ctx.write_input(target, 1, rounded(kernel, kernels[0]), "weight")
    _set_geometry(target, size, begin, end)
    bns = [bn for bn, _, _ in branches.identities if bn is not None]
    removed = _rewire(tree, [conv for conv in convs if conv is not target] + bns, target)
    return Merged(target, target.outputs[0], tuple(bns), removed)


def _branches(ctx: FoldContext, tree: Tree, bn_params: Callable[[ir.Node], AffineParams | None]) -> _Branches | None:
    """The leaves by kind; None when one is neither a Conv of X, a BN of X no move took, X, nor a constant."""
    branches = _Branches([], [], [])
    source = next(_source(leaf) for leaf in tree.leaves if ctx.resolver.value_of(leaf) is None)
    for leaf, sign in zip(tree.leaves, tree.signs, strict=True):
        producer = leaf.producer()
        if ctx.resolver.value_of(leaf) is not None:
            branches.constants.append((leaf, sign))
        elif (conv := _conv_of(leaf)) is not None:
            branches.convs.append((conv, sign))
        elif leaf is source:
            branches.identities.append((None, None, sign))
        elif (
            producer is not None
            and producer.op_type == "BatchNormalization"
            and (params := bn_params(producer)) is not None
        ):
            branches.identities.append((producer, params, sign))
        else:
            return None
    if not branches.convs or len(tree.leaves) < 2:
        return None
    return branches


def _identity_maps(branches: _Branches, channels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(± s, ± t) of each identity branch: X itself is s = 1, t = 0."""
    maps = []
    for bn, params, sign in branches.identities:
        if bn is None or params is None:
            scale, shift = np.ones(channels), np.zeros(channels)
        else:
            scale, shift = params.for_channels(channels, f"output of {describe(bn)}")
        maps.append((sign * scale, sign * shift))
    return maps


def _constant_bias(ctx: FoldContext, leaf: ir.Value, shape: tuple[int, ...]) -> np.ndarray:
    """A constant added to the sum, as a per-channel bias: one number, or one per channel on axis 1."""
    constant = ctx.resolver.value_of(leaf)
    assert constant is not None  # sorted as a constant leaf
    channels, rank = shape[0], len(shape)
    aligned = (1,) * (rank - constant.ndim) + constant.shape
    if constant.ndim > rank or any(size != 1 for axis, size in enumerate(aligned) if axis != 1):
        raise Skip(f"the constant '{leaf.name}' added to the sum varies along more than the channel axis")
    if aligned[1] not in (1, channels):
        raise Skip(f"the constant '{leaf.name}' added to the sum has {aligned[1]} channels, the sum {channels}")
    return np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,))


def _tree(root: ir.Node) -> Tree:
    leaves: list[ir.Value] = []
    signs: list[float] = []
    sums = [root]
    stack = list(reversed(_signed_inputs(root, 1.0)))
    while stack:
        value, sign = stack.pop()
        producer = value.producer() if value is not None else None
        if value is not None and producer is not None and _is_sum(producer, root.graph) and _only_use(value):
            sums.append(producer)
            stack.extend(reversed(_signed_inputs(producer, sign)))
        elif value is not None:
            leaves.append(value)
            signs.append(sign)
    return Tree(root, leaves, signs, sums)


def _signed_inputs(node: ir.Node, sign: float) -> list[tuple[ir.Value | None, float]]:
    """A sum's operands with the sign each enters the total with (a Sub negates its second)."""
    if node.op_type == "Sub":
        return [(node.inputs[0], sign), (node.inputs[1], -sign)]
    return [(value, sign) for value in node.inputs]


def _children(node: ir.Node) -> list[ir.Node]:
    return [producer for value in node.inputs if value is not None and (producer := value.producer()) is not None]


def _is_sum(node: ir.Node, graph: ir.Graph | None) -> bool:
    return node.op_type in BRANCH_SUMS and in_default_domain(node) and node.graph is graph and len(node.outputs) == 1


def _only_use(value: ir.Value) -> bool:
    return not value.is_graph_output() and use_count(value) == 1


def _conv_of(leaf: ir.Value) -> ir.Node | None:
    producer = leaf.producer()
    if producer is not None and producer.op_type == "Conv" and in_default_domain(producer):
        return producer
    return None


def _source(leaf: ir.Value) -> ir.Value | None:
    """The X a branch computes from: a Conv's or BN's data input, or the leaf itself."""
    producer = leaf.producer()
    if producer is not None and producer.op_type in ("Conv", "BatchNormalization") and in_default_domain(producer):
        return producer.inputs[0]
    return leaf


def _check_single_uses(tree: Tree) -> None:
    for leaf in tree.leaves:
        producer = leaf.producer()
        if producer is not None and _source(leaf) is not leaf and not _only_use(leaf):
            raise Skip(f"output of {describe(producer)} is used outside the sum")
    if len({id(leaf) for leaf in tree.leaves}) != len(tree.leaves):
        raise Skip(f"{describe(tree.root)} adds one branch twice")


def _check_alike(convs: list[ir.Node], kernels: list[np.ndarray], has_identity: bool) -> None:
    first = convs[0]
    for conv, kernel in zip(convs, kernels, strict=True):
        if (kernel.dtype, kernel.shape[:2], kernel.ndim) != (kernels[0].dtype, kernels[0].shape[:2], kernels[0].ndim):
            raise Skip(f"the weights of {describe(conv)} and {describe(first)} differ in dtype or channels")
        for name in ("group", "strides", "dilations"):
            if _ints(conv, name, 1, kernel.ndim - 2) != _ints(first, name, 1, kernel.ndim - 2):
                raise Skip(f"{describe(conv)} and {describe(first)} differ in {name}")
        if str_attr(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise Skip(f"{describe(conv)} pads by auto_pad {str_attr(conv, 'auto_pad', '')}")
    if has_identity:
        if any(stride != 1 for stride in _ints(first, "strides", 1, kernels[0].ndim - 2)):
            raise Skip(
                f"the identity branch needs stride 1, {describe(first)} has strides "
                f"{_ints(first, 'strides', 1, kernels[0].ndim - 2)}"
            )
        group = int_attr(first, "group", 1)
        if kernels[0].shape[0] != kernels[0].shape[1] * group:
            raise Skip(
                f"the identity branch needs as many output channels as input channels, {describe(first)} "
                f"maps {kernels[0].shape[1] * group} to {kernels[0].shape[0]}"
            )


def _geometry(conv: ir.Node, kernel: np.ndarray) -> _Geometry:
    rank = kernel.ndim - 2
    pads = [0] * (2 * rank) if str_attr(conv, "auto_pad", "NOTSET") == "VALID" else _ints(conv, "pads", 0, 2 * rank)
    return _Geometry(tuple(kernel.shape[2:]), tuple(pads[:rank]), tuple(pads[rank:]))


def _placement(geometries: list[_Geometry], dilations: list[int], size: tuple[int, ...]):
    """(pads begin, pads end, offset of each branch) of the merged kernel; Skip when some branch does not fit."""
    begin = tuple(max(g.begin[axis] for g in geometries) for axis in range(len(size)))
    reach = {
        tuple(g.begin[a] + g.end[a] - dilations[a] * (g.size[a] - 1) for a in range(len(size))) for g in geometries
    }
    if len(reach) != 1:
        raise Skip("the branches' pads do not give the same output size for every input size")
    end = tuple(r + dilations[a] * (size[a] - 1) - begin[a] for a, r in enumerate(next(iter(reach))))
    offsets = []
    for g in geometries:
        offset = []
        for axis, dilation in enumerate(dilations):
            shift, remainder = divmod(begin[axis] - g.begin[axis], dilation)
            if remainder or shift + g.size[axis] > size[axis] or end[axis] < 0:
                raise Skip(
                    f"a {'x'.join(map(str, g.size))} branch with pads {g.begin}/{g.end} does not sit "
                    f"inside the merged {'x'.join(map(str, size))} kernel"
                )
            offset.append(shift)
        offsets.append(tuple(offset))
    return begin, end, offsets


def _bias(ctx: FoldContext, conv: ir.Node, channels: int) -> np.ndarray:
    bias = ctx.optional_weight(conv, 2, "bias")
    if bias is None:
        return np.zeros(channels)
    if bias.shape != (channels,):
        raise Skip(f"bias of {describe(conv)} has shape {bias.shape}, expected ({channels},)")
    return bias.astype(np.float64)


def _ints(node: ir.Node, name: str, default: int, count: int) -> list[int]:
    attr = node.attributes.get(name)
    if attr is None:
        return [default] * count
    value = attr.value
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _set_geometry(conv: ir.Node, size: tuple[int, ...], begin: tuple[int, ...], end: tuple[int, ...]) -> None:
    conv.attributes.pop("auto_pad", None)
    conv.attributes["pads"] = ir.AttrInt64s("pads", [*begin, *end])
    if "kernel_shape" in conv.attributes:
        conv.attributes["kernel_shape"] = ir.AttrInt64s("kernel_shape", list(size))


def _rewire(tree: Tree, dropped: list[ir.Node], target: ir.Node) -> tuple[ir.Value, ...]:
    """The target's output takes over the root's; the sums and the other branches go (constants stay, if used)."""
    graph = tree.root.graph
    assert graph is not None  # a root found in a graph
    removed = tuple([*(node.outputs[0] for node in dropped), *(node.outputs[0] for node in tree.sums[1:])])
    inputs = [value for node in [*dropped, *tree.sums] for value in node.inputs]
    take_over_output(tree.root.outputs[0], target.outputs[0])
    graph.remove([*tree.sums, *dropped], safe=True)
    for value in inputs:
        if value is not None:
            remove_if_dead(graph, value)
    return removed
