"""Change a model's floating-point element type (float16/bfloat16/float64 <-> float32).

The check uses it to run a half-precision model in float32: the fp32 run of the
original is the reference that says how far the half-precision original itself
is from the exact result, and so how far the folded model may be.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnfold.graph.proto_walk import proto_graphs, proto_tensors

HALF_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
_TYPE_ATTRIBUTES = {
    ("Cast", "to"),
    ("RandomNormal", "dtype"),
    ("RandomUniform", "dtype"),
    ("RandomNormalLike", "dtype"),
    ("RandomUniformLike", "dtype"),
    ("EyeLike", "dtype"),
}


def convert_float_type(model: onnx.ModelProto, source: frozenset[int], target: int) -> onnx.ModelProto:
    """A copy of `model` (with its data loaded) in which every `source`-typed float becomes `target`."""
    converted = onnx.ModelProto.FromString(model.SerializeToString())
    target_dtype = helper.tensor_dtype_to_np_dtype(target)
    for tensor in proto_tensors(converted):
        _convert_tensor(tensor, source, target_dtype)
    graphs = list(proto_graphs(converted, in_functions=True))
    for graph in graphs:
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.tensor_type.elem_type in source:
                info.type.tensor_type.elem_type = target
    for nodes in [function.node for function in converted.functions] + [graph.node for graph in graphs]:
        for node in nodes:
            for attribute in node.attribute:
                if (node.op_type, attribute.name) in _TYPE_ATTRIBUTES and attribute.i in source:
                    attribute.i = target
    return converted


def _convert_tensor(tensor: TensorProto, source, target_dtype) -> None:
    if tensor.data_type not in source:
        return
    array = numpy_helper.to_array(tensor).astype(np.float64).astype(target_dtype)
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def has_half_precision(model: onnx.ModelProto) -> bool:
    return any(has_float_type(model, t) for t in HALF_TYPES)


def has_float_type(model: onnx.ModelProto, data_type: int) -> bool:
    """Whether the main graph's inputs, outputs or initializers use `data_type`."""
    graph = model.graph
    infos = (*graph.input, *graph.output)
    return any(i.type.tensor_type.elem_type == data_type for i in infos) or any(
        t.data_type == data_type for t in graph.initializer
    )
