"""Element types and shapes of values: as the model states them, else from ONNX shape inference, else from the op."""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir

from bnfold.graph.ir_walk import initializer_values
from bnfold.graph.node_attrs import in_default_domain
from bnfold.graph.proto_walk import proto_graphs

logger = logging.getLogger(__name__)


class ValueTypes:
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
        return {
            info.name: info.type
            for graph in proto_graphs(proto)
            for info in (*graph.value_info, *graph.input, *graph.output)
        }


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
        value.const_value = ir.ExternalTensor(
            "bnfold-skeleton",
            0,
            tensor.nbytes,
            tensor.dtype,
            shape=ir.Shape(tensor.shape.numpy()),
            name=value.name or "",
        )
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


def _rank_from_producer(types: ValueTypes, value: ir.Value) -> int | None:
    """The rank an op's output must have, read from the op itself: a Transpose's perm, a Reshape's constant
    shape, Unsqueeze/Squeeze axes on an input of known rank, a Conv's weight, or a rank-keeping op's input."""
    node = value.producer()
    if node is None or not in_default_domain(node) or not node.inputs:
        return None
    op = node.op_type
    if op == "Transpose" and "perm" in node.attributes:
        return len(node.attributes["perm"].value)
    if op in ("Conv", "ConvTranspose", "DeformConv") and len(node.inputs) > 1:  # output rank = kernel rank
        weight = _static_dims(node.inputs[1])
        return None if weight is None else len(weight)
    if op == "Reshape" and len(node.inputs) > 1:
        shape = _static_dims(node.inputs[1])
        return shape[0] if shape is not None and len(shape) == 1 and isinstance(shape[0], int) else None
    if op in ("Unsqueeze", "Squeeze"):
        return _rank_after_axes(types, node)
    if op in _RANK_KEEPING:
        return types.rank(node.inputs[0])
    return None


_RANK_KEEPING = frozenset(
    {
        "Identity",
        "Cast",
        "CastLike",
        "Relu",
        "Sigmoid",
        "Tanh",
        "HardSwish",
        "HardSigmoid",
        "LeakyRelu",
        "Clip",
        "Neg",
        "Abs",
        "Dropout",
        "BatchNormalization",
        "Softmax",
    }
)


def _rank_after_axes(types: ValueTypes, node: ir.Node) -> int | None:
    rank = types.rank(node.inputs[0])
    if rank is None:
        return None
    count: int | None
    if "axes" in node.attributes:
        count = len(node.attributes["axes"].value)
    elif len(node.inputs) > 1 and (dims := _static_dims(node.inputs[1])):
        count = dims[0] if isinstance(dims[0], int) else None
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
