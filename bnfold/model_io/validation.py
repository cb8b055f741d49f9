"""Refusing input that is not a usable ONNX model, before anything else touches it.

Everything here reads only the ModelProto's structure (external data is not
loaded), so a hostile file is refused with an InputError that names the problem
before a byte of its external data is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx

from bnfold.errors import InputError, first_line
from bnfold.graph.proto_walk import node_graphs
from bnfold.model_io.element_sizes import SUB_BYTE_TYPES, itemsize_of, packed_bytes
from bnfold.model_io.external_data import check_external_data
from bnfold.model_io.node_schema import NodeChecker
from bnfold.model_io.wire_format import WireError, strip_large_tensors

_KNOWN_TYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_COMPLEX_TYPES = frozenset({onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128})


# Below this size a file is parsed as a whole (protobuf's C++ parser does it in milliseconds); above it, its
# large tensors are read from the file when needed (model_io/wire_format.py walks its fields in Python).
_STRIP_FILE_BYTES = 16 << 20


def load_proto(path: Path, *, by_reference: bool = False) -> onnx.ModelProto:
    """The validated ModelProto of `path`, without external data.

    `by_reference`: large inline initializers become external-data references to the
    model file itself (model_io/wire_format.py), so their bytes are neither parsed nor copied.
    """
    return load_checked(path, by_reference=by_reference)[0]


def load_checked(path: Path, *, by_reference: bool = False) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """`load_proto`, and the model's tensors whose data lives outside its structure (found while validating)."""
    try:
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not an ONNX model file")
        size = path.stat().st_size
    except OSError as error:  # a name too long, a loop of links, a folder it may not read
        raise InputError(f"{path}: cannot read it ({error.strerror or error})") from None
    if size == 0:
        raise InputError(f"{path}: empty file, not an ONNX model")
    proto = _by_reference(path) if by_reference and size >= _STRIP_FILE_BYTES else None
    if proto is None:
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # protobuf raises several types for garbage
            raise InputError(f"{path}: not an ONNX model ({first_line(error)})") from error
    externals = validate_proto(proto, str(path))
    check_external_data(proto, path.parent, model_file=path, externals=externals)
    return proto, externals


def _by_reference(path: Path) -> onnx.ModelProto | None:
    try:
        return strip_large_tensors(path)[0]
    except (WireError, OSError, ValueError):
        return None  # onnx.load then parses it, or says what is wrong with it


def validate_proto(proto: onnx.ModelProto, label: str) -> list[onnx.TensorProto]:
    """Refuse a ModelProto that parses but cannot be a model; return its tensors whose data is external.

    One walk over every graph, subgraph and function body checks the node order, every
    text and every tensor (initializers and tensor attributes) at once: on graphs of a
    hundred thousand nodes each walk costs as much as copying the model.
    """
    if not proto.HasField("graph"):
        raise InputError(f"{label}: not an ONNX model (no graph)")
    default_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if proto.ir_version >= 3 and default_opset is None:
        raise InputError(f"{label}: the model imports no default-domain opset")
    newest = onnx.defs.onnx_opset_version()
    if default_opset is not None and not 1 <= default_opset <= newest:
        raise InputError(f"{label}: unknown default-domain opset {default_opset} (this onnx knows 1..{newest})")
    _check_text(
        [
            proto.producer_name,
            proto.domain,
            proto.doc_string,
            *(o.domain for o in proto.opset_import),
            *_metadata_text(proto),
        ],
        label,
        "the model's",
    )
    for value in (*proto.graph.input, *proto.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type == 0:
            raise InputError(f"{label}: graph input or output '{value.name}' has no element type (elem_type 0)")
    inputs = {value.name: value.type for value in proto.graph.input}
    for value in proto.graph.output:  # one value, two declarations: a graph of values can keep only one
        if value.name in inputs and value.HasField("type") and value.type != inputs[value.name]:
            raise InputError(f"{label}: graph output '{value.name}' is also an input, declared with another type")
    tensors: list[onnx.TensorProto] = []
    _check_graph_structure(proto.graph, set(), label, tensors, NodeChecker(proto, label, default_opset))
    for function in proto.functions:
        where = f"{label}: function {function.name}"
        _check_node_order(function.node, set(function.input), function.output, where, tensors, None)
    for tensor in tensors:
        _check_tensor(tensor, label)
    return [tensor for tensor in tensors if tensor.data_location == onnx.TensorProto.EXTERNAL]


def _check_graph_structure(
    graph: onnx.GraphProto, outer: set[str], label: str, tensors: list, nodes: NodeChecker | None
) -> None:
    _check_text(
        [graph.name, graph.doc_string, *(v.name for v in (*graph.input, *graph.output, *graph.value_info))],
        label,
        f"graph '{graph.name}'s",
    )
    tensors.extend(graph.initializer)
    tensors.extend(sparse.values for sparse in graph.sparse_initializer)
    defined = set(outer)
    defined.update(value.name for value in graph.input)
    defined.update(tensor.name for tensor in graph.initializer)
    defined.update(sparse.values.name for sparse in graph.sparse_initializer)
    if nodes is not None:
        nodes.add_constants(graph.initializer)
    _check_node_order(graph.node, defined, [o.name for o in graph.output], label, tensors, nodes)


def _check_node_order(
    nodes, defined: set[str], outputs: Iterable[str], label: str, tensors: list, checker: NodeChecker | None
) -> None:
    """Every input must be defined before use (or later, if the graph is merely unsorted); every text UTF-8;
    every node as its schema says (`checker`, node_schema.py; function bodies: None).

    Also collects the tensors held in attributes into `tensors`.
    """
    defined = set(defined)
    produced: set[str] | None = None  # every node's outputs: only needed once an input comes before its node
    unsorted = False
    for node in nodes:
        for name in node.input:
            if name and name not in defined:
                if not isinstance(name, str):
                    _check_text([name], label, "a node's")
                produced = produced if produced is not None else {n for other in nodes for n in other.output if n}
                if name not in produced:
                    raise InputError(f"{label}: input '{name}' of node '{_node_label(node)}' is not defined anywhere")
                unsorted = True
        if node.attribute:
            _check_attributes(
                node, defined | produced if unsorted and produced is not None else defined, label, tensors, checker
            )
        if checker is not None:
            checker.check(node)
        defined.update(node.output)
    _check_node_texts(nodes, defined, label)
    defined.discard("")
    for name in outputs:
        if name not in defined:
            raise InputError(f"{label}: graph output '{name}' is not produced by any node")
    if unsorted:
        _refuse_cycles(nodes, label)


def _check_attributes(
    node: onnx.NodeProto, outer: set[str], label: str, tensors: list, checker: NodeChecker | None
) -> None:
    _check_text([attribute.name for attribute in node.attribute], label, "a node's")
    for attribute in node.attribute:
        for text in (attribute.s, *attribute.strings):
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{label}: attribute '{attribute.name}' holds text that is not UTF-8") from None
        if attribute.HasField("t"):
            tensors.append(attribute.t)
        tensors.extend(attribute.tensors)
    for subgraph in node_graphs(node):
        _check_graph_structure(subgraph, outer, label, tensors, checker)


def _check_node_texts(nodes, defined: set[str], label: str) -> None:
    """Node names, op types, domains, doc strings and outputs are text; joining fails on the bytes protobuf
    hands back for what is not UTF-8."""
    try:
        "".join(node.name for node in nodes)
        "".join(node.op_type for node in nodes)
        "".join(node.domain for node in nodes)
        "".join(node.doc_string for node in nodes)
        "".join(defined)
    except TypeError:
        for node in nodes:
            _check_text([node.name, node.op_type, node.domain, node.doc_string, *node.output], label, "a node's")


def _refuse_cycles(nodes, label: str) -> None:
    """Kahn's algorithm over the node list; what cannot be ordered lies on a cycle."""
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    waiting_on = [{producer[n] for n in node.input if n in producer} - {index} for index, node in enumerate(nodes)]
    if any(index in {producer.get(n) for n in node.input} for index, node in enumerate(nodes)):
        raise InputError(f"{label}: the graph has a cycle (a node consumes its own output)")
    consumers: dict[int, list[int]] = {}
    for index, needs in enumerate(waiting_on):
        for need in needs:
            consumers.setdefault(need, []).append(index)
    ready = [index for index, needs in enumerate(waiting_on) if not needs]
    ordered = 0
    while ready:
        index = ready.pop()
        ordered += 1
        for consumer in consumers.get(index, []):
            waiting_on[consumer].discard(index)
            if not waiting_on[consumer]:
                ready.append(consumer)
    if ordered != len(nodes):
        stuck = next(nodes[i] for i, needs in enumerate(waiting_on) if needs)
        raise InputError(f"{label}: the graph has a cycle through node '{_node_label(stuck)}'")


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or node.op_type


def _check_text(texts: Iterable, label: str, where: str) -> None:
    """Protobuf hands back text that is not valid UTF-8 as bytes: such a name cannot be a model's."""
    for text in texts:
        if isinstance(text, bytes):
            raise InputError(f"{label}: {where} text {text[:40]!r} is not valid UTF-8")


def _metadata_text(proto: onnx.ModelProto) -> Iterator:
    for entry in proto.metadata_props:
        yield entry.key
        yield entry.value


def _check_tensor(tensor: onnx.TensorProto, label: str) -> None:
    name, data_type = tensor.name, tensor.data_type
    if not isinstance(name, str):
        _check_text([name], label, "a tensor's")
    if data_type == onnx.TensorProto.UNDEFINED:
        raise InputError(f"{label}: tensor '{name}' has no element type (data_type 0)")
    if data_type not in _KNOWN_TYPES:
        raise InputError(f"{label}: tensor '{name}' has an unknown element type (data_type {data_type})")
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"{label}: tensor '{name}' has a negative dimension {list(tensor.dims)}")
    if data_type == onnx.TensorProto.STRING and (
        tensor.HasField("raw_data") or tensor.data_location == onnx.TensorProto.EXTERNAL
    ):
        raise InputError(f"{label}: tensor '{name}' of strings keeps raw bytes; strings live in string_data")
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        _check_inline_size(tensor, label)


def _check_inline_size(tensor: onnx.TensorProto, label: str) -> None:
    """An inline tensor must hold exactly as much data as its dims claim."""
    elements = math.prod(tensor.dims)
    if tensor.HasField("raw_data"):
        itemsize = itemsize_of(tensor.data_type)
        claimed = elements * itemsize if itemsize is not None else packed_bytes(tensor.data_type, elements)
        held = len(tensor.raw_data)
        if claimed is not None and claimed != held:
            raise InputError(f"{label}: tensor '{tensor.name}' claims {claimed} bytes but holds {held}")
        return
    if tensor.data_type in SUB_BYTE_TYPES:
        return  # packed into int32_data: several elements a value
    held = sum(len(getattr(tensor, field)) for field in _TYPED_FIELDS)
    expected = elements * (2 if tensor.data_type in _COMPLEX_TYPES else 1)
    if held != expected:
        raise InputError(f"{label}: tensor '{tensor.name}' claims {elements} elements but holds {held} values")
