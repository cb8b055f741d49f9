"""Constant values: what a value is when it depends on constants only, evaluated under the model's own opsets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir

from bnfold.errors import InputError
from bnfold.graph.node_attrs import in_default_domain
from bnfold.graph.op_types import NONDETERMINISTIC, QUANTIZATION
from bnfold.graph.skip import Skip

logger = logging.getLogger(__name__)

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
        if not in_default_domain(node) or node.op_type in NONDETERMINISTIC:
            return False
        return not any(
            attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()
        )

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
                raise InputError(
                    f"node '{node.name or node.op_type}' ({node.op_type}) would compute a constant "
                    f"'{name}' of {elements:,} elements ({elements * itemsize / 2**30:,.1f} GiB); "
                    "bnfold refuses constants this large"
                )
            if elements > _MAX_EVALUATED_ELEMENTS:
                return False
        return True


def constant_input(
    resolver: ConstantResolver, value: ir.Value | None, label: str, *, refuse_quantized: bool = False
) -> np.ndarray:
    """The constant array behind `value`; Skip, naming `label`, when it is missing, can be
    overridden at run time, is quantized (with `refuse_quantized`) or is computed at run time."""
    if value is None:
        raise Skip(f"{label} is missing")
    if resolver.is_overridable_initializer(value):
        raise Skip(f"{label} is a graph input (can be overridden at run time)")
    if refuse_quantized:
        quantization = sorted(resolver.ops_behind(value) & QUANTIZATION)
        if quantization:
            raise Skip(f"{label} is quantized ({quantization[0]}); fold before quantizing")
    array = resolver.value_of(value)
    if array is None:
        raise Skip(f"{label} is not constant (computed at run time)")
    return array


def _one_node_model(node: onnx.NodeProto, opsets: dict[str, int]) -> onnx.ModelProto:
    """`node` alone in a model importing the model's own opsets: a bare node would run under the newest
    opset's signature (Unsqueeze-13 takes its axes as an input, Unsqueeze-9 as an attribute)."""
    graph = onnx.helper.make_graph(
        [node],
        "constant",
        [onnx.ValueInfoProto(name=n) for n in node.input if n],
        [onnx.ValueInfoProto(name=n) for n in node.output if n],
    )
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
            types[name] = onnx.helper.make_tensor_type_proto(
                onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape
            )
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
    dims = [d for d in value.shape if isinstance(d, int)] if value.shape is not None else None
    if value.shape is None or dims is None or len(dims) != len(value.shape):
        return None
    return np.zeros(tuple(dims), dtype=value.dtype.numpy())


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
