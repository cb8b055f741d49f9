"""Refusing input that is not a usable ONNX model, before anything else touches it.

Everything here reads only the ModelProto's structure (external data is not
loaded), so a hostile file is refused with an InputError that names the problem
before a byte of its external data is read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx

from bnfold.errors import InputError, first_line
from bnfold.proto_walk import node_graphs, proto_tensors

# Types packed several elements to a byte: their element counts are not field lengths.
_SUB_BYTE_TYPES = frozenset(
    getattr(onnx.TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, name)
)
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_COMPLEX_TYPES = frozenset({onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128})


# Below this size a file is parsed as a whole; above it, its large tensors are read from the file when needed.
_STRIP_FILE_BYTES = 1 << 20


def load_proto(path: Path, *, by_reference: bool = False) -> onnx.ModelProto:
    """The validated ModelProto of `path`, without external data.

    `by_reference`: large inline initializers become external-data references to the
    model file itself (wire.py), so their bytes are neither parsed nor copied.
    """
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
    validate_proto(proto, str(path))
    check_external_data(proto, path.parent, model_file=path)
    return proto


def _by_reference(path: Path) -> onnx.ModelProto | None:
    from bnfold.wire import WireError, strip_large_tensors

    try:
        return strip_large_tensors(path)[0]
    except (WireError, OSError, ValueError):
        return None  # onnx.load then parses it, or says what is wrong with it


def validate_proto(proto: onnx.ModelProto, label: str) -> None:
    """Refuse a ModelProto that parses but cannot be a model."""
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
    for tensor in proto_tensors(proto):
        _check_tensor(tensor, label)
    for value in (*proto.graph.input, *proto.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type == 0:
            raise InputError(f"{label}: graph input or output '{value.name}' has no element type (elem_type 0)")
    _check_graph_structure(proto.graph, set(), label)
    for function in proto.functions:
        _check_node_order(function.node, set(function.input), function.output, f"{label}: function {function.name}")


def _check_graph_structure(graph: onnx.GraphProto, outer: set[str], label: str) -> None:
    _check_text(
        [graph.name, graph.doc_string, *(v.name for v in (*graph.input, *graph.output, *graph.value_info))],
        label,
        f"graph '{graph.name}'s",
    )
    defined = set(outer)
    defined.update(value.name for value in graph.input)
    defined.update(tensor.name for tensor in graph.initializer)
    defined.update(sparse.values.name for sparse in graph.sparse_initializer)
    _check_node_order(graph.node, defined, [o.name for o in graph.output], label)


def _check_node_order(nodes, defined: set[str], outputs: Iterable[str], label: str) -> None:
    """Every input must be defined before use (or later, if the graph is merely unsorted)."""
    defined = set(defined)
    produced = {name for node in nodes for name in node.output if name}
    unsorted = False
    for node in nodes:
        _check_text(
            [
                node.name,
                node.op_type,
                node.domain,
                node.doc_string,
                *node.input,
                *node.output,
                *(attribute.name for attribute in node.attribute),
            ],
            label,
            "a node's",
        )
        for name in node.input:
            if name and name not in defined:
                if name not in produced:
                    raise InputError(f"{label}: input '{name}' of node '{_node_label(node)}' is not defined anywhere")
                unsorted = True
        for subgraph in node_graphs(node):
            _check_graph_structure(subgraph, defined | produced if unsorted else defined, label)
        defined.update(name for name in node.output if name)
    for name in outputs:
        if name not in defined:
            raise InputError(f"{label}: graph output '{name}' is not produced by any node")
    if unsorted:
        _refuse_cycles(nodes, label)


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
    _check_text([tensor.name], label, "a tensor's")
    if tensor.data_type == onnx.TensorProto.UNDEFINED:
        raise InputError(f"{label}: tensor '{tensor.name}' has no element type (data_type 0)")
    _check_inline_size(tensor, label)


def _check_inline_size(tensor: onnx.TensorProto, label: str) -> None:
    """An inline tensor must hold exactly as much data as its dims claim."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type in _SUB_BYTE_TYPES:
        return
    elements = math.prod(tensor.dims)
    if tensor.HasField("raw_data"):
        itemsize = itemsize_of(tensor.data_type)
        if itemsize is not None and elements * itemsize != len(tensor.raw_data):
            raise InputError(
                f"{label}: tensor '{tensor.name}' claims {elements * itemsize} bytes but holds {len(tensor.raw_data)}"
            )
        return
    held = sum(len(getattr(tensor, field)) for field in _TYPED_FIELDS)
    expected = elements * (2 if tensor.data_type in _COMPLEX_TYPES else 1)
    if held != expected:
        raise InputError(f"{label}: tensor '{tensor.name}' claims {elements} elements but holds {held} values")


def itemsize_of(data_type: int) -> int | None:
    """Bytes per element of an ONNX data type, or None where that is not a fixed whole number."""
    if data_type in _SUB_BYTE_TYPES or data_type == onnx.TensorProto.STRING:
        return None
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def uses_external_data(proto: onnx.ModelProto) -> bool:
    """Whether any tensor of the model keeps its data in an external file."""
    return any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in proto_tensors(proto))


def check_external_data(proto: onnx.ModelProto, base_dir: Path, model_file: Path | None = None) -> None:
    """Refuse external-data references that could leave the model's folder or overrun a file.

    Covers the cases behind onnx's CVE-2022-25882, CVE-2024-27318 and CVE-2025-51480:
    absolute locations, '..', symlinks out of the folder, and out-of-range offsets.
    References to `model_file` itself (load_proto's by_reference) are checked for extent only.
    """
    base = base_dir.resolve()
    own = model_file.resolve() if model_file is not None else None
    file_sizes: dict[str, int] = {}  # checked once per location, however many tensors it holds
    for tensor in proto_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if own is not None and model_file is not None and location == own.name and (base / location).resolve() == own:
            _check_inline_extent(tensor, info, own, model_file)  # the model file's own bytes: as an inline tensor
            continue
        where = f"external data of tensor '{tensor.name}'"
        if location not in file_sizes:
            file_sizes[location] = _checked_file_size(base, location, where)
        _check_extent(tensor, info, file_sizes[location], location, where)


def _check_inline_extent(tensor: onnx.TensorProto, info: dict[str, str], path: Path, label: Path) -> None:
    """A large inline tensor read by reference (wire.py): it must hold exactly as much data as its dims claim."""
    itemsize = itemsize_of(tensor.data_type)
    claimed = None if itemsize is None else math.prod(tensor.dims) * itemsize
    held = int(info.get("length", "0"))
    if claimed is not None and held != claimed:
        raise InputError(f"{label}: tensor '{tensor.name}' claims {claimed} bytes but holds {held}")
    if int(info.get("offset", "0")) + held > path.stat().st_size:
        raise InputError(f"{label}: tensor '{tensor.name}' lies past the end of the file")


def _checked_file_size(base: Path, location: str, where: str) -> int:
    """The size of the data file at `location`, once it is known to be a file inside `base`."""
    if not location:
        raise InputError(f"{where} has no location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
        raise InputError(f"{where}: absolute location '{location}' is refused")
    if ".." in location.replace("\\", "/").split("/"):
        raise InputError(f"{where}: location '{location}' leaves the model's folder")
    target = (base / location).resolve()
    if base not in target.parents:
        raise InputError(f"{where}: location '{location}' leads outside the model's folder")
    if not target.is_file():
        raise InputError(f"{where}: file '{location}' does not exist")
    status = target.stat()
    if status.st_nlink > 1:  # onnx-ir refuses these too: the other name could be any file on the disk
        raise InputError(
            f"{where}: file '{location}' has {status.st_nlink} hard links, so it could be "
            "any file on the disk; fold a copy of it"
        )
    return status.st_size


def _check_extent(tensor: onnx.TensorProto, info: dict[str, str], size: int, location: str, where: str) -> None:
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise InputError(f"{where}: offset/length are not integers") from None
    itemsize = itemsize_of(tensor.data_type)
    claimed = None if itemsize is None else math.prod(tensor.dims) * itemsize
    if length is None:
        length = claimed or 0
    elif claimed is not None and length < claimed:
        raise InputError(f"{where}: length {length} is less than the {claimed} bytes its dims claim")
    if offset < 0 or length < 0 or offset + length > size:
        raise InputError(
            f"{where}: bytes {offset}..{offset + length} lie past the end of '{Path(location).name}' ({size} bytes)"
        )
