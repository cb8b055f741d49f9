"""Sites found by comparing two models, for `verify` without the pass's knowledge.

Given only two models, `find_sites` compares them: every value name present in
both whose producing node, its attributes (subgraphs included) or its constant
inputs differ, and every output of a node calling a function whose body differs.
Not compared: a value that only reaches an affine node the folded model lost, through
layout nodes, Concats and affine nodes whose constants changed (a MatMul's bias Add that
took the map too); a Shape reading the value does not count. The map now sits in that
value's producer, so the value holds something else; the map's own output is compared
instead. The pass names the same
sites itself (folding/sites.py), and a test holds the two to the same answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
import onnx

from bnfold.graph.op_types import AFFINE, PASS_THROUGH
from bnfold.report import Site


def find_sites(
    original: onnx.ModelProto,
    folded: onnx.ModelProto,
    tensor_of: Callable[[onnx.ModelProto, onnx.TensorProto], np.ndarray],
) -> list[Site]:
    """The sites of `folded` against `original`, in the original's graph order.

    `tensor_of(model, tensor)` reads a constant's values (external data included).
    """
    producers = {name: node for node in folded.graph.node for name in node.output if name}
    constants = _Constants(original, folded, tensor_of)
    changed_functions = _changed_functions(original, folded)
    nearest = _NearestBatchNorm(original)
    found: list[Site] = []
    for node in original.graph.node:
        twin = _twin(node, producers)
        if twin is None:
            continue
        branch = _branch_changed(node, twin)
        if node.op_type in _COMPUTE_NOTHING and _only_inputs_renamed(node, twin, constants):
            continue  # a layout node on a fold's path: the value after the fold is compared where it is computed
        if any(_took_a_map(name, nearest.consumers, producers, constants) for name in node.output if name):
            continue  # a map folded back into it: compared where the map was
        if branch is not None or _differs(node, twin, constants) or (node.domain, node.op_type) in changed_functions:
            inside = None if branch is None else ("then_branch" if branch[1] else "else_branch")
            found += [Site(name, nearest(node, inside), branch) for name in node.output if name and name in producers]
    return found


# Nodes that only move or copy values (and Pad, which adds zeros): when only their data input was renamed, they
# sit on a fold's path (a scale folded forward through them), and the value is compared where it is computed.
_COMPUTE_NOTHING = PASS_THROUGH


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            found[name].append(node)
    return found


def _took_a_map(
    name: str, consumers: dict[str, list[onnx.NodeProto]], folded: dict[str, onnx.NodeProto], constants
) -> bool:
    """Whether `name` reaches an affine node of the original that the folded model no longer has, through
    single uses of layout nodes, Concats and affine nodes whose constants changed (a MatMul's bias Add took the
    map too): a fold moved that map into `name`'s producer (Gemm → Reshape → Transpose → BN, MatMul → Add → Mul),
    so `name` holds other values now, and what the map computed is compared at its output. A Shape or Size
    reading `name` is no use of its values."""
    for _ in range(64):
        users = [user for user in consumers.get(name, []) if user.op_type not in _METADATA_READERS]
        if len(users) != 1 or not users[0].output:
            return False
        user = users[0]
        if user.op_type in AFFINE:
            twin = folded.get(user.output[0])
            if twin is None or twin.op_type != user.op_type:
                return True
            if not _differs(user, twin, constants):
                return False
        elif user.op_type not in _COMPUTE_NOTHING and user.op_type != "Concat":
            return False
        name = user.output[0]  # a Concat's input took its slice of a map folded back behind the Concat
    return False


_METADATA_READERS = frozenset({"Shape", "Size"})


def _only_inputs_renamed(node: onnx.NodeProto, twin: onnx.NodeProto, constants: _Constants) -> bool:
    """Same op and attributes, same constant inputs (a Reshape's shape): only the data input's name changed."""
    if (node.op_type, node.domain, len(node.input)) != (twin.op_type, twin.domain, len(twin.input)):
        return False
    return _attributes(node) == _attributes(twin) and not any(constants.differ(name) for name in node.input[1:] if name)


def _twin(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The folded model's node producing the first of `node`'s outputs that the folded model still has."""
    return next((producers[name] for name in node.output if name in producers), None)


def _differs(node: onnx.NodeProto, twin: onnx.NodeProto, constants: _Constants) -> bool:
    if (node.op_type, node.domain, list(node.input)) != (twin.op_type, twin.domain, list(twin.input)):
        return True
    if _attributes(node) != _attributes(twin):
        return True
    return any(constants.differ(name) for name in node.input if name)


def _attributes(node: onnx.NodeProto) -> dict[str, bytes]:
    return {attribute.name: attribute.SerializeToString(deterministic=True) for attribute in node.attribute}


def _branch_changed(node: onnx.NodeProto, twin: onnx.NodeProto) -> tuple[str, bool] | None:
    """For an If whose only change is in one branch: (its condition, the value that selects that branch)."""
    if node.op_type != "If" or twin.op_type != "If" or list(node.input) != list(twin.input):
        return None
    before, after = _attributes(node), _attributes(twin)
    changed = [name for name in ("then_branch", "else_branch") if before.get(name) != after.get(name)]
    others_same = all(before.get(k) == after.get(k) for k in set(before) | set(after) if not k.endswith("_branch"))
    if len(changed) != 1 or not others_same:
        return None
    return node.input[0], changed[0] == "then_branch"


class _Constants:
    """Whether an initializer of the main graph holds different values in the two models."""

    def __init__(self, original: onnx.ModelProto, folded: onnx.ModelProto, tensor_of) -> None:
        self.models = (original, folded)
        self.tensors = ({t.name: t for t in original.graph.initializer}, {t.name: t for t in folded.graph.initializer})
        self.tensor_of = tensor_of
        self._cache: dict[str, bool] = {}

    def differ(self, name: str) -> bool:
        if name not in self._cache:
            self._cache[name] = self._differ(name)
        return self._cache[name]

    def _differ(self, name: str) -> bool:
        before, after = self.tensors[0].get(name), self.tensors[1].get(name)
        if before is None or after is None:
            return (before is None) != (after is None)
        if (before.data_type, list(before.dims)) != (after.data_type, list(after.dims)):
            return True
        a, b = self.tensor_of(self.models[0], before), self.tensor_of(self.models[1], after)
        return not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _changed_functions(original: onnx.ModelProto, folded: onnx.ModelProto) -> set[tuple[str, str]]:
    bodies = {(f.domain, f.name): f.SerializeToString(deterministic=True) for f in folded.functions}
    return {
        (f.domain, f.name)
        for f in original.functions
        if bodies.get((f.domain, f.name)) != f.SerializeToString(deterministic=True)
    }


def _batch_norms_inside(node: onnx.NodeProto, attribute_name: str | None = None) -> Iterator[str]:
    """Names of the BatchNormalization nodes in `node`'s subgraphs (an If branch, a Loop body), at any depth;
    only in the subgraph attribute `attribute_name` when given."""
    attributes = [a for a in node.attribute if attribute_name is None or a.name == attribute_name]
    pending = [attribute.g for attribute in attributes if attribute.HasField("g")]
    pending += [graph for attribute in attributes for graph in attribute.graphs]
    while pending:
        graph = pending.pop(0)
        for inner in graph.node:
            if inner.op_type == "BatchNormalization":
                yield inner.name or inner.output[0]
            pending += [attribute.g for attribute in inner.attribute if attribute.HasField("g")]


class _NearestBatchNorm:
    """The BatchNormalization of a model nearest to a node (itself, upstream or downstream), by name."""

    def __init__(self, model: onnx.ModelProto, depth: int = 4) -> None:
        self.depth = depth
        self.producers = {name: n for n in model.graph.node for name in n.output if name}
        self.consumers = _consumers(model)

    def __call__(self, node: onnx.NodeProto, inside: str | None = None) -> str | None:
        inner = next(_batch_norms_inside(node, inside), None)
        if inner is not None:
            return inner
        frontier, seen = [node], {id(node)}
        for _ in range(self.depth + 1):
            for current in frontier:
                if current.op_type == "BatchNormalization":
                    return current.name or current.output[0]
            frontier = [n for n in self._neighbours(frontier) if id(n) not in seen]
            seen.update(id(n) for n in frontier)
        return None

    def _neighbours(self, nodes: list[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
        for node in nodes:
            yield from (self.producers[name] for name in node.input if name in self.producers)
            for name in node.output:
                yield from self.consumers.get(name, [])
