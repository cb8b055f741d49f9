"""Loading and saving models: validation, external-data safety, atomic writes.

Loading refuses anything that is not a usable ONNX model with an InputError that
names the problem, and checks every external-data reference before any byte of it
is read. Saving always decides the output's external-data layout explicitly (one
data file named after the output, never the input's), and writes into a staging
folder beside the destination that is renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from bnfold.errors import InputError, first_line

logger = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
# Stay clear of the limit: the graph, names and attributes need room too.
_INLINE_BUDGET = int(1.8 * 2**30)
EXTERNAL_DATA_MODES = ("auto", "always", "never")
_EXTERNAL_THRESHOLD_BYTES = 1024


def load_model(path: str | os.PathLike) -> ir.Model:
    """Read and validate an ONNX model file; external tensors stay on disk (memory-mapped)."""
    path = Path(path)
    model = to_ir(load_proto(path), str(path))
    ir.external_data.set_base_dir(model.graph, str(path.parent.resolve()))
    return model


def to_ir(proto: onnx.ModelProto, label: str) -> ir.Model:
    """Deserialize without adding anything the proto did not say.

    onnx-ir types every initializer from its tensor, and would then write a
    value_info entry for each; only initializers the proto described keep theirs.
    """
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:  # noqa: BLE001 - any failure here means the model is not usable
        raise InputError(f"{label}: cannot read the model: {first_line(error)}") from error
    described = {info.name for info in _all_value_infos(proto)}
    for value in _initializers(model):
        if value.name not in described and not value.is_graph_input():
            value.type = None
            value.shape = None
    unlist_initializer_inputs(model)
    return model


def _legacy_graphs(model: ir.Model) -> Iterator[ir.Graph]:
    """Graphs of an IR < 4 model, where every initializer had to be a graph input too."""
    if (model.ir_version or 0) < 4:
        yield model.graph
        yield from model.graph.subgraphs()


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
                value.shape = ir.Shape(value.const_value.shape)
            graph.inputs.append(value)


def _all_value_infos(proto: onnx.ModelProto) -> Iterator[onnx.ValueInfoProto]:
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.value_info
        graphs.extend(_attribute_graphs(graph.node))


def load_proto(path: Path) -> onnx.ModelProto:
    """The validated ModelProto of `path`, without external data."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an ONNX model file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises several types for garbage
        raise InputError(f"{path}: not an ONNX model ({first_line(error)})") from error
    validate_proto(proto, str(path))
    check_external_data(proto, path.parent)
    return proto


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
    for tensor in _all_tensors(proto):
        _check_inline_size(tensor, label)


def _check_inline_size(tensor: onnx.TensorProto, label: str) -> None:
    if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.HasField("raw_data"):
        return
    itemsize = _itemsize(tensor.data_type)
    if itemsize is None:
        return
    expected = int(np.prod(tensor.dims, dtype=np.float64) * itemsize)
    if expected != len(tensor.raw_data):
        raise InputError(f"{label}: tensor '{tensor.name}' claims {expected} bytes but holds {len(tensor.raw_data)}")


def _itemsize(data_type: int) -> float | None:
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return None
    if data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) or np_dtype.kind in "OUS":
        return None
    return np_dtype.itemsize


def check_external_data(proto: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external-data references that could leave the model's folder or overrun a file.

    The checks run before anything is read, covering onnx's path-traversal CVEs
    (absolute locations, '..', symlinks out of the folder) and out-of-range offsets.
    """
    base = base_dir.resolve()
    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"external data of tensor '{tensor.name}'"
        if not location:
            raise InputError(f"{where} has no location")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
            raise InputError(f"{where}: absolute location '{location}' is refused")
        if ".." in Path(location).parts or ".." in location.replace("\\", "/").split("/"):
            raise InputError(f"{where}: location '{location}' leaves the model's folder")
        target = (base / location).resolve()
        if base not in target.parents:
            raise InputError(f"{where}: location '{location}' leads outside the model's folder")
        if not target.is_file():
            raise InputError(f"{where}: file '{location}' does not exist")
        _check_extent(tensor, info, target, where)


def _check_extent(tensor: onnx.TensorProto, info: dict[str, str], target: Path, where: str) -> None:
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise InputError(f"{where}: offset/length are not integers") from None
    if length is None:
        itemsize = _itemsize(tensor.data_type)
        length = 0 if itemsize is None else int(np.prod(tensor.dims, dtype=np.float64) * itemsize)
    size = target.stat().st_size
    if offset < 0 or length < 0 or offset + length > size:
        raise InputError(f"{where}: bytes {offset}..{offset + length} lie past the end of '{target.name}' ({size} bytes)")


def _all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    graphs = [proto.graph]
    for function in proto.functions:
        graphs.extend(_attribute_graphs(function.node))
        yield from _attribute_tensors(function.node)
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        yield from (sparse.values for sparse in graph.sparse_initializer)
        yield from _attribute_tensors(graph.node)
        graphs.extend(_attribute_graphs(graph.node))


def _attribute_tensors(nodes) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors


def _attribute_graphs(nodes) -> list[onnx.GraphProto]:
    found = []
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                found.append(attribute.g)
            found.extend(attribute.graphs)
    return found


def external_data_files(model: ir.Model) -> set[Path]:
    """The resolved data files the model's external tensors read from."""
    return {Path(value.const_value.path).resolve() for value in _initializers(model)
            if isinstance(value.const_value, ir.ExternalTensor)}


def _initializers(model: ir.Model) -> Iterator[ir.Value]:
    yield from model.graph.initializers.values()
    for subgraph in model.graph.subgraphs():
        yield from subgraph.initializers.values()


def initializer_bytes(model: ir.Model) -> int:
    return sum(value.const_value.nbytes for value in _initializers(model) if value.const_value is not None)


def wants_external_data(model: ir.Model, mode: str) -> bool:
    """Decide the output layout: 'always', 'never', or 'auto' (as the input, or when over 2 GB)."""
    if mode not in EXTERNAL_DATA_MODES:
        raise InputError(f"--external-data must be one of {', '.join(EXTERNAL_DATA_MODES)}, not '{mode}'")
    if mode == "always":
        return True
    too_big = initializer_bytes(model) > _INLINE_BUDGET
    if mode == "never":
        if too_big:
            raise InputError("the model is larger than protobuf's 2 GB limit; it needs external data")
        return False
    return too_big or bool(external_data_files(model))


class StagedOutput:
    """Writes a model (and its data file) into a hidden folder beside `destination`.

    `commit` renames the files into place (data file first, then the model), so the
    destination is either the old file or the complete new one, never a partial
    write; an existing symlink at the destination is replaced, not written through.
    """

    def __init__(self, destination: str | os.PathLike) -> None:
        self.destination = Path(destination)
        folder = self.destination.parent
        if not folder.is_dir():
            raise InputError(f"{self.destination}: output folder '{folder}' does not exist")
        if self.destination.is_dir():
            raise InputError(f"{self.destination}: is a directory")
        self._stage = Path(tempfile.mkdtemp(prefix=".bnfold-", dir=folder))
        self.path = self._stage / self.destination.name
        self.data_name = f"{self.destination.name}.data"

    def write(self, model: ir.Model, external_data: bool) -> None:
        relist_initializer_inputs(model)
        if external_data:
            ir.save(model, self.path, external_data=self.data_name,
                    size_threshold_bytes=_EXTERNAL_THRESHOLD_BYTES)
        else:
            ir.external_data.load_to_model(model)
            ir.save(model, self.path)
        for written in self._stage.iterdir():
            _fsync(written)

    def commit(self) -> None:
        data = self._stage / self.data_name
        if data.exists():
            os.replace(data, self.destination.parent / self.data_name)
        os.replace(self.path, self.destination)
        _fsync_folder(self.destination.parent)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self._stage, ignore_errors=True)

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()


def save_model(model: ir.Model, destination: str | os.PathLike, external_data: str = "auto") -> None:
    """Write `model` to `destination` atomically, with the chosen external-data layout."""
    use_external = wants_external_data(model, external_data)
    with StagedOutput(destination) as staged:
        staged.write(model, use_external)
        staged.commit()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

