"""Between onnx.ModelProto and onnx_ir.Model, losing nothing either way.

onnx-ir types every initializer and would write a value_info entry for each, does not
carry sparse initializers, and has no notion of IR < 4's rule that initializers are
listed as graph inputs too. `to_ir` undoes the first and keeps the others aside;
`to_proto` restores them.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx_ir as ir

from bnfold.errors import InputError, first_line
from bnfold.graph.ir_walk import initializer_values, subgraphs
from bnfold.graph.proto_walk import proto_graphs

_SPARSE_KEY = "bnfold.sparse_initializers"


def to_ir(proto: onnx.ModelProto, label: str) -> ir.Model:
    """Deserialize without adding anything the proto did not say."""
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:  # any failure here means the model is not usable
        raise InputError(f"{label}: cannot read the model: {first_line(error)}") from error
    # onnx-ir types every initializer from its tensor and would write a value_info
    # entry for each; only initializers the proto described keep their type.
    described = {info.name for graph in proto_graphs(proto) for info in graph.value_info}
    for value in initializer_values(model):
        if value.name not in described and not value.is_graph_input():
            value.type = None
            value.shape = None
    if proto.graph.sparse_initializer:
        model.meta[_SPARSE_KEY] = [
            onnx.SparseTensorProto.FromString(s.SerializeToString()) for s in proto.graph.sparse_initializer
        ]
    unlist_initializer_inputs(model)
    return model


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize, restoring what onnx-ir does not carry (sparse initializers, IR < 4 input lists)."""
    relist_initializer_inputs(model)
    proto = ir.serde.serialize_model(model)
    proto.graph.sparse_initializer.extend(model.meta.get(_SPARSE_KEY, []))
    return proto


def _legacy_graphs(model: ir.Model) -> Iterator[ir.Graph]:
    """Graphs of an IR < 4 model, where every initializer had to be a graph input too."""
    if (model.ir_version or 0) < 4:
        yield model.graph
        yield from subgraphs(model.graph)


def unlist_initializer_inputs(model: ir.Model) -> None:
    """Before IR 4 initializers were listed as inputs by rule, not to be overridden: unlist them."""
    for graph in _legacy_graphs(model):
        kept = [v for v in graph.inputs if not v.is_initializer()]
        if len(kept) != len(graph.inputs):
            graph.inputs.clear()
            graph.inputs.extend(kept)


def relist_initializer_inputs(model: ir.Model) -> None:
    """Undo `unlist_initializer_inputs` for whatever initializers remain (before saving)."""
    for graph in _legacy_graphs(model):
        listed = set(graph.inputs)
        for value in graph.initializers.values():
            if value in listed:
                continue
            if value.type is None and value.const_value is not None:
                value.type = ir.TensorType(value.const_value.dtype)
                value.shape = ir.Shape(value.const_value.shape.numpy())
            graph.inputs.append(value)
