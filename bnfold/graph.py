"""Small helpers over the onnx-ir graph: constant values, unique names, rewiring.

Nothing here knows about BatchNormalization; the rules and the pass build on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx
import onnx_ir as ir

from bnfold.errors import InputError
from bnfold.validation import all_graphs

logger = logging.getLogger(__name__)

# Ops whose output is not a function of their inputs alone.
_NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
# Inputs that an op reads only for their type ("type") or type and shape ("shape"),
# never their values: a placeholder of that type/shape evaluates the op exactly.
_METADATA_ONLY_INPUTS = {("CastLike", 1): "type", ("Shape", 0): "shape", ("Size", 0): "shape"}
# Evaluating a constant subgraph bigger than this would copy large tensors through Python: not evaluated.
_MAX_EVALUATED_ELEMENTS = 1 << 26
# A node whose constant output would be larger than this is a hostile file (ConstantOfShape([2**31]) in 733 bytes).
_HOSTILE_OUTPUT_BYTES = 2 << 30
# Inputs this small are given to shape inference with their values (shapes, axes, repeats, ranges).
_SHAPE_DATA_ELEMENTS = 4096


class ConstantResolver:
    """Finds the value of a tensor when it depends on constants only.

    A value is constant when it is an initializer (that a caller cannot override)
    or when it is computed by deterministic default-domain nodes from constants:
    Constant, Identity, Cast, CastLike, Expand, Reshape, Unsqueeze, Transpose,
    Shape of an initializer and so on. The constant-only subgraph is evaluated with
    onnx's reference implementation, so no operator needs a special case.
    """

    def __init__(self, model: ir.Model) -> None:
        self._opsets = dict(model.opset_imports)
        self._cache: dict[ir.Value, np.ndarray | None] = {}

    def value_of(self, value: ir.Value | None) -> np.ndarray | None:
        """The constant array behind `value`, or None when it is computed at run time."""
        if value is None:
            return None
        if value not in self._cache:
            self._cache[value] = self._evaluate(value)
        return self._cache[value]

    def forget(self, value: ir.Value) -> None:
        self._cache.pop(value, None)

    @staticmethod
    def is_overridable_initializer(value: ir.Value) -> bool:
        """An initializer that is also a graph input is only a default value.

        (IR < 4 models, where the listing was mandatory, are unlisted on load.)
        """
        return value.is_initializer() and value.is_graph_input()

    def ops_behind(self, value: ir.Value | None) -> set[str]:
        """Op types of the nodes that (transitively) produce `value`."""
        ops: set[str] = set()
        for node in _producers_upstream(value):
            ops.add(node.op_type)
        return ops

    def _evaluate(self, value: ir.Value) -> np.ndarray | None:
        if value.is_graph_input():
            return None
        if value.const_value is not None:
            return value.const_value.numpy()
        node = value.producer()
        if node is None or not self._evaluable(node):
            return None
        arrays = []
        for index, input_value in enumerate(node.inputs):
            array = self._input_array(node, index, input_value)
            if input_value is not None and array is None:
                return None
            arrays.append(array)
        return self._run_node(node, arrays, value)

    def _input_array(self, node: ir.Node, index: int, value: ir.Value | None) -> np.ndarray | None:
        if value is None:
            return None
        array = self.value_of(value)
        needs = _METADATA_ONLY_INPUTS.get((node.op_type, index))
        if array is None and needs is not None:
            return _placeholder(value, with_shape=needs == "shape")
        return array

    def _evaluable(self, node: ir.Node) -> bool:
        if not in_default_domain(node) or node.op_type in _NONDETERMINISTIC_OPS:
            return False
        return not any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                       for attr in node.attributes.values())

    def _run_node(self, node: ir.Node, arrays: list, wanted: ir.Value) -> np.ndarray | None:
        if sum(a.size for a in arrays if a is not None) > _MAX_EVALUATED_ELEMENTS:
            return None
        proto = ir.serde.serialize_node(node)
        if not self._output_fits(node, proto, arrays):
            return None
        feeds = {}
        for index, array in enumerate(arrays):
            if array is not None:
                feeds[proto.input[index]] = array
        # Imported here: it loads every reference kernel, and models whose constants are
        # plain initializers never need it.
        from onnx.reference import ReferenceEvaluator

        try:
            evaluator = ReferenceEvaluator(_one_node_model(proto, self._opsets))
            results = evaluator.run(None, feeds)
        except Exception as error:  # noqa: BLE001 - any failure means "not a known constant"
            logger.debug("cannot evaluate %s %r as a constant: %s", node.op_type, node.name, error)
            return None
        for output, result in zip(node.outputs, results, strict=False):
            if output is wanted:
                return np.asarray(result)
        return None


    def _output_fits(self, node: ir.Node, proto: onnx.NodeProto, arrays: list) -> bool:
        """Whether every output of `node`, predicted by shape inference from its constant inputs, is small
        enough to evaluate; InputError when one would be absurdly large (a hostile file)."""
        outputs = _predicted_outputs(proto, arrays, self._opsets.get("", 1))
        if outputs is None:
            logger.debug("not evaluating %s %r: the size of its output is unknown", node.op_type, node.name)
            return False
        for name, (elements, itemsize) in outputs.items():
            if elements * itemsize > _HOSTILE_OUTPUT_BYTES:
                raise InputError(f"node '{node.name or node.op_type}' ({node.op_type}) would compute a constant "
                                 f"'{name}' of {elements:,} elements ({elements * itemsize / 2**30:,.1f} GiB); "
                                 "bnfold refuses constants this large")
            if elements > _MAX_EVALUATED_ELEMENTS:
                return False
        return True


def _one_node_model(node: onnx.NodeProto, opsets: dict[str, int]) -> onnx.ModelProto:
    """`node` alone in a model importing the model's own opsets: a bare node would run under the newest
    opset's signature (Unsqueeze-13 takes its axes as an input, Unsqueeze-9 as an attribute)."""
    graph = onnx.helper.make_graph([node], "constant", [onnx.ValueInfoProto(name=n) for n in node.input if n],
                                   [onnx.ValueInfoProto(name=n) for n in node.output if n])
    imports = [onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items()]
    return onnx.helper.make_model(graph, opset_imports=imports)


def _predicted_outputs(node: onnx.NodeProto, arrays: list, opset: int) -> dict[str, tuple[int, int]] | None:
    """{output: (elements, bytes per element)} by ONNX shape inference on the node alone; None when unknown."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        types, data = {}, {}
        for name, array in zip(node.input, arrays, strict=False):
            if not name or array is None:
                continue
            types[name] = onnx.helper.make_tensor_type_proto(onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                                                             array.shape)
            if array.size <= _SHAPE_DATA_ELEMENTS:
                data[name] = onnx.numpy_helper.from_array(array, name)
        inferred = onnx.shape_inference.infer_node_outputs(schema, node, types, data)
    except Exception as error:  # noqa: BLE001 - no prediction: not evaluated
        logger.debug("no shape for %s: %s", node.op_type, error)
        return None
    sizes = {}
    for name in node.output:
        tensor = inferred[name].tensor_type if name in inferred else None
        if not name:
            continue
        if tensor is None or not tensor.HasField("shape") or not all(d.HasField("dim_value") for d in tensor.shape.dim):
            return None
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize if tensor.elem_type else 8
        sizes[name] = (int(np.prod([d.dim_value for d in tensor.shape.dim], dtype=np.float64)), itemsize)
    return sizes


def _placeholder(value: ir.Value, with_shape: bool) -> np.ndarray | None:
    """Zeros of `value`'s static dtype (and shape), or None when that is unknown."""
    if value.dtype is None:
        return None
    if not with_shape:
        return np.zeros((), dtype=value.dtype.numpy())
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return np.zeros(tuple(value.shape), dtype=value.dtype.numpy())


def _producers_upstream(value: ir.Value | None) -> Iterator[ir.Node]:
    seen: set[ir.Node] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        node = None if current is None else current.producer()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(node.inputs)


class TypeHints:
    """Element type and shape of values, from the model or, failing that, from ONNX shape inference.

    Exporters often leave intermediate values untyped. Inference runs at most once,
    on a serialized copy, only when a value's own type is missing; its results are
    used to decide, never written into the model.
    """

    def __init__(self, model: ir.Model) -> None:
        self._model = model
        self._inferred: dict[str, onnx.TypeProto] | None = None

    def dtype(self, value: ir.Value | None) -> ir.DataType | None:
        if value is None:
            return None
        if value.dtype is not None:
            return value.dtype
        tensor_type = self._tensor_type(value)
        return None if tensor_type is None or not tensor_type.elem_type else ir.DataType(tensor_type.elem_type)

    def shape(self, value: ir.Value | None) -> tuple | None:
        """Dims as ints (static) or None (free); None when even the rank is unknown."""
        if value is None:
            return None
        if value.shape is not None:
            return self.stated_shape(value)
        tensor_type = self._tensor_type(value)
        if tensor_type is None or not tensor_type.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)

    @staticmethod
    def stated_shape(value: ir.Value | None) -> tuple | None:
        """The shape the model itself states for `value`, without running inference."""
        if value is None or value.shape is None:
            return None
        return tuple(d if isinstance(d, int) else None for d in value.shape)

    def rank(self, value: ir.Value | None) -> int | None:
        """The rank of `value`: from its shape, or when inference gives none, from the op that makes it."""
        shape = self.shape(value)
        if shape is not None:
            return len(shape)
        return None if value is None else _rank_from_producer(self, value)

    def dim(self, value: ir.Value | None, axis: int) -> int | None:
        shape = self.shape(value)
        return None if shape is None or len(shape) <= axis else shape[axis]

    def _tensor_type(self, value: ir.Value):
        if self._inferred is None:
            self._inferred = self._infer()
        found = self._inferred.get(value.name or "")
        return found.tensor_type if found is not None and found.HasField("tensor_type") else None

    def invalidate(self) -> None:
        """Forget inferred types (after the graph gained values, e.g. a Mul+Add rewrite)."""
        self._inferred = None

    def _infer(self) -> dict[str, onnx.TypeProto]:
        try:
            # data_prop: shapes computed at run time from Shape/Gather/Concat (Keras's Dense on NHWC) get values
            proto = onnx.shape_inference.infer_shapes(_skeleton(self._model), data_prop=True)
        except Exception as error:  # noqa: BLE001 - no hints is a valid answer
            logger.debug("shape inference failed: %s", error)
            return {}
        # Names are unique across the main graph and its subgraphs, so one map serves all.
        # Function bodies get no inferred types: a function's input ranks can differ
        # from one call to the next.
        return {info.name: info.type for graph in all_graphs(proto)
                for info in (*graph.value_info, *graph.input, *graph.output)}


_SKELETON_MIN_BYTES = 1024


def _skeleton(model: ir.Model) -> onnx.ModelProto:
    """The model serialized without its weights' bytes, for shape inference.

    Large in-memory initializers stand in as external-data references (metadata
    only) while serializing; inference needs their dtype and dims, not their data.
    """
    swapped = []
    for value in initializer_values(model):
        tensor = value.const_value
        if tensor is None or isinstance(tensor, ir.ExternalTensor) or tensor.nbytes <= _SKELETON_MIN_BYTES:
            continue
        value.const_value = ir.ExternalTensor("bnfold-skeleton", 0, tensor.nbytes, tensor.dtype,
                                              shape=tensor.shape, name=value.name)
        swapped.append((value, tensor))
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    # Before IR 4 shape inference ignores initializers that are not listed as inputs (bnfold unlists them
    # on load, and the ones it adds are new): inferring as IR 4 keeps their ranks.
    proto.ir_version = max(proto.ir_version, 4)
    return proto


def _rank_from_producer(hints: TypeHints, value: ir.Value) -> int | None:
    """The rank an op's output must have, read from the op itself: a Transpose's perm, a Reshape's constant
    shape, Unsqueeze/Squeeze axes on an input of known rank, a Conv's weight, or a rank-keeping op's input."""
    node = value.producer()
    if node is None or not in_default_domain(node) or not node.inputs:
        return None
    op = node.op_type
    if op == "Transpose" and "perm" in node.attributes:
        return len(node.attributes["perm"].value)
    if op in ("Conv", "ConvTranspose") and len(node.inputs) > 1:
        weight = _static_dims(node.inputs[1])
        return None if weight is None else len(weight)
    if op == "Reshape" and len(node.inputs) > 1:
        shape = _static_dims(node.inputs[1])
        return shape[0] if shape is not None and len(shape) == 1 and isinstance(shape[0], int) else None
    if op in ("Unsqueeze", "Squeeze"):
        return _rank_after_axes(hints, node)
    if op in _RANK_KEEPING:
        return hints.rank(node.inputs[0])
    return None


_RANK_KEEPING = frozenset({"Identity", "Cast", "CastLike", "Relu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid",
                           "LeakyRelu", "Clip", "Neg", "Abs", "Dropout", "BatchNormalization", "Softmax"})


def _rank_after_axes(hints: TypeHints, node: ir.Node) -> int | None:
    rank = hints.rank(node.inputs[0])
    if rank is None:
        return None
    if "axes" in node.attributes:
        count = len(node.attributes["axes"].value)
    elif len(node.inputs) > 1 and _static_dims(node.inputs[1]):
        count = _static_dims(node.inputs[1])[0]
        count = count if isinstance(count, int) else None
    else:
        return None  # Squeeze without axes removes every dimension of size 1: unknown here
    if count is None:
        return None
    return rank + count if node.op_type == "Unsqueeze" else rank - count


def _static_dims(value: ir.Value | None) -> tuple | None:
    """The dims of `value` as stated, or as its tensor has them (initializers carry no type after loading)."""
    if value is None:
        return None
    if value.shape is not None:
        return tuple(value.shape)
    return tuple(value.const_value.shape) if value.const_value is not None else None


class NameAuthority:
    """Hands out names no value or node of the model uses yet."""

    def __init__(self, model: ir.Model) -> None:
        self._taken: set[str] = set()
        for graph, _ in model_graphs(model):
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


def model_graphs(model: ir.Model) -> Iterator[tuple[ir.Graph, ir.Function | None]]:
    """Every graph of the model with the function it belongs to (None outside functions):
    the main graph and its subgraphs, then each function body and its subgraphs."""
    yield model.graph, None
    for subgraph in subgraphs(model.graph):
        yield subgraph, None
    for function in model.functions.values():
        yield function.graph, function
        for subgraph in subgraphs(function.graph):
            yield subgraph, function


def attributes_of(node: ir.Node) -> Iterable[ir.Attr]:
    """`node.attributes.values()`, through the plain dict behind onnx-ir's UserDict where there is one (faster)."""
    return getattr(node.attributes, "data", node.attributes).values()


def subgraphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """The graphs nested in `graph`'s nodes, at any depth, in the order onnx-ir's `subgraphs()` gives.

    Looks only at attributes; onnx-ir's walk visits every node through a generic
    iterator, which dominated the time on graphs of many thousand nodes.
    """
    for node in graph:
        for attribute in attributes_of(node):
            if attribute.is_ref():
                continue
            if attribute.type == ir.AttributeType.GRAPH:
                nested = [attribute.value]
            elif attribute.type == ir.AttributeType.GRAPHS:
                nested = list(attribute.value)
            else:
                continue
            for subgraph in nested:
                yield subgraph
                yield from subgraphs(subgraph)


def initializer_values(model: ir.Model) -> Iterator[ir.Value]:
    """The initializers of the main graph and its subgraphs (function bodies have none)."""
    for graph in (model.graph, *subgraphs(model.graph)):
        yield from graph.initializers.values()


@dataclass
class TensorSlot:
    """A place in the model that holds a tensor: an initializer, or (an item of) a tensor attribute."""

    tensor: ir.TensorProtocol
    name: str | None
    put: Callable[[ir.TensorProtocol], None]
    initializer: bool = False


def tensor_slots(model: ir.Model) -> Iterator[TensorSlot]:
    """Every tensor the model stores, initializers first, in declaration order."""
    for value in initializer_values(model):
        if value.const_value is not None:
            yield TensorSlot(value.const_value, value.name, partial(setattr, value, "const_value"), initializer=True)
    for graph, _ in model_graphs(model):
        for node in graph:
            for attribute in list(attributes_of(node)):
                yield from _attribute_slots(node, attribute)


def _attribute_slots(node: ir.Node, attribute: ir.Attr) -> Iterator[TensorSlot]:
    if attribute.is_ref():  # a function's attribute reference holds no tensor
        return
    if attribute.type == ir.AttributeType.TENSOR:
        def put(tensor: ir.TensorProtocol) -> None:
            node.attributes[attribute.name] = ir.AttrTensor(attribute.name, tensor, doc_string=attribute.doc_string)

        yield TensorSlot(attribute.value, attribute.value.name, put)
    elif attribute.type == ir.AttributeType.TENSORS:
        for index, item in enumerate(attribute.value):
            def put_item(tensor: ir.TensorProtocol, index: int = index) -> None:
                items = list(node.attributes[attribute.name].value)
                items[index] = tensor
                node.attributes[attribute.name] = ir.AttrTensors(attribute.name, items,
                                                                 doc_string=attribute.doc_string)

            yield TensorSlot(item, item.name, put_item)


def values_in_use(values: Iterable[ir.Value | None]) -> list[ir.Value]:
    return [v for v in values if v is not None and (v.is_graph_output() or len(v.uses()) > 0)]


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
    graph = node.graph
    inputs = list(node.inputs)
    take_over_output(node.outputs[0], replacement)
    graph.remove(node, safe=True)
    for value in inputs:
        remove_if_dead(graph, value)


def bypass_node(node: ir.Node, data: ir.Value) -> None:
    """Remove `node`, its consumers reading `data` instead; its dead inputs go too.

    Unlike `retire_node`, `data` keeps its name: it may be a graph input or feed others.
    """
    graph = node.graph
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
        if current is None or current.is_graph_output() or current.uses():
            continue
        if current.is_initializer() and not current.is_graph_input():
            owner = current.graph
            if owner is not None and owner.initializers.get(current.name) is current:
                del owner.initializers[current.name]
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


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.value)


def float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else float(attr.value)


def str_attr(node: ir.Node, name: str, default: str) -> str:
    attr = node.attributes.get(name)
    if attr is None:
        return default
    value = attr.value
    return value.decode() if isinstance(value, bytes) else str(value)


def in_default_domain(node: ir.Node) -> bool:
    """The node is a standard ONNX operator (domain "" or its alias "ai.onnx")."""
    return node.domain in ("", "ai.onnx")


def opset_of(node: ir.Node, graph_opsets: dict[str, int]) -> int:
    if node.version is not None:
        return node.version
    return graph_opsets.get(node.domain or "", graph_opsets.get("ai.onnx", 1))

