"""Loading and saving models: nothing added, nothing lost, atomic writes.

Loading validates the file (see validation.py) and deserializes into onnx-ir,
undoing the two things the IR would otherwise change on the way back out: a
value_info entry per initializer, and IR < 4's initializers listed as inputs.
Saving goes through `to_proto` (which restores what onnx-ir cannot carry:
sparse initializers), decides the external-data layout explicitly (one data file
named after the output, never the input's), and writes into a staging folder
beside the destination that is renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from bnfold.errors import InputError, OutputError, first_line
from bnfold.graph import initializer_values
from bnfold.validation import all_graphs, check_output_path, load_proto

logger = logging.getLogger(__name__)

# Stay clear of protobuf's 2 GB limit: the graph, names and attributes need room too.
_INLINE_BUDGET = int(1.8 * 2**30)
EXTERNAL_DATA_MODES = ("auto", "always", "never")
_EXTERNAL_THRESHOLD_BYTES = 1024
_SPARSE_KEY = "bnfold.sparse_initializers"


def load_model(path: str | os.PathLike, proto: onnx.ModelProto | None = None) -> ir.Model:
    """Read and validate an ONNX model file; external tensors stay on disk (memory-mapped).

    `proto`: the file's ModelProto when the caller already loaded it (validation.load_proto).
    """
    path = Path(path)
    model = to_ir(load_proto(path) if proto is None else proto, str(path))
    ir.external_data.set_base_dir(model.graph, str(path.parent.resolve()))
    return model


def to_ir(proto: onnx.ModelProto, label: str) -> ir.Model:
    """Deserialize without adding anything the proto did not say."""
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:  # noqa: BLE001 - any failure here means the model is not usable
        raise InputError(f"{label}: cannot read the model: {first_line(error)}") from error
    # onnx-ir types every initializer from its tensor and would write a value_info
    # entry for each; only initializers the proto described keep their type.
    described = {info.name for graph in all_graphs(proto) for info in graph.value_info}
    for value in initializer_values(model):
        if value.name not in described and not value.is_graph_input():
            value.type = None
            value.shape = None
    if proto.graph.sparse_initializer:
        model.meta[_SPARSE_KEY] = [onnx.SparseTensorProto.FromString(s.SerializeToString())
                                   for s in proto.graph.sparse_initializer]
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


def external_data_files(model: ir.Model) -> set[Path]:
    """The resolved data files the model's external tensors read from."""
    return {Path(value.const_value.path).resolve() for value in initializer_values(model)
            if isinstance(value.const_value, ir.ExternalTensor)}


def model_file_bytes(path: Path, data_files: set[Path]) -> int:
    """The model's size on disk: its file plus the data files it reads (cheap: no tensor is touched)."""
    return path.stat().st_size + sum(data.stat().st_size for data in data_files)


def external_data_threshold(model: ir.Model, mode: str, source_bytes: int) -> int | None:
    """The output layout: tensors of at least this many bytes go to the data file; None = inline.

    'auto' keeps the input's layout (external data when the input had it, from its
    smallest external tensor up) and switches to external data when the model
    (`source_bytes`, its size on disk) would not fit protobuf's 2 GB limit;
    'always' and 'never' force it.
    """
    if mode not in EXTERNAL_DATA_MODES:
        raise InputError(f"--external-data must be one of {', '.join(EXTERNAL_DATA_MODES)}, not '{mode}'")
    if mode == "always":
        return _EXTERNAL_THRESHOLD_BYTES
    too_big = source_bytes > _INLINE_BUDGET
    if mode == "never":
        if too_big:
            raise InputError("the model is larger than protobuf's 2 GB limit; it needs external data")
        return None
    external_sizes = [value.const_value.nbytes for value in initializer_values(model)
                      if isinstance(value.const_value, ir.ExternalTensor)]
    if external_sizes:
        return min(min(external_sizes), _EXTERNAL_THRESHOLD_BYTES)
    return _EXTERNAL_THRESHOLD_BYTES if too_big else None


class StagedOutput:
    """Writes a model (and its data file) into a hidden folder beside `destination`.

    `commit` fsyncs and renames the files into place (data file first, then the
    model), so the destination is either the old file or the complete new one,
    never a partial write; an existing symlink at the destination is replaced, not
    written through. Leaving the `with` block without commit removes everything.
    """

    def __init__(self, destination: str | os.PathLike) -> None:
        self.destination = Path(destination)
        folder = self.destination.parent
        check_output_path(self.destination)
        try:
            self._stage = Path(tempfile.mkdtemp(prefix=".bnfold-", dir=folder))
        except OSError as error:
            raise InputError(f"{self.destination}: cannot write in '{folder}' ({error.strerror})") from None
        self.path = self._stage / self.destination.name
        self.data_name = f"{self.destination.name}.data"

    def write(self, model: ir.Model, external_threshold: int | None) -> None:
        """Serialize `model` into the staging folder (the model is not usable afterwards).

        `external_threshold`: tensors of at least this many bytes go to the data
        file (see `external_data_threshold`); None writes everything inline.
        """
        try:
            self._write(model, external_threshold)
        except OSError as error:
            raise OutputError(f"{self.destination}: cannot write it ({error.strerror or error})") from error

    def _write(self, model: ir.Model, external_threshold: int | None) -> None:
        if external_threshold is None:
            write_streamed(model, self.path)
        else:
            # onnx-ir moves tensors strictly larger than its threshold, streaming them.
            ir.external_data.unload_from_model(model, self._stage, self.data_name,
                                               size_threshold_bytes=max(external_threshold - 1, 0))
            onnx.save(to_proto(model), self.path)
        data = self._stage / self.data_name
        if data.exists() and data.stat().st_size == 0:
            data.unlink()  # nothing was large enough: no empty data file beside the output
        for written in self._stage.iterdir():
            _fsync(written)

    def commit(self) -> None:
        data = self._stage / self.data_name
        try:
            if data.exists():
                os.replace(data, self.destination.parent / self.data_name)
            os.replace(self.path, self.destination)
        except OSError as error:
            raise OutputError(f"{self.destination}: cannot put it in place ({error.strerror or error})") from error
        _fsync_folder(self.destination.parent)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self._stage, ignore_errors=True)

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()


def write_streamed(model: ir.Model, path: Path) -> None:
    """Write `model` with its data inline, holding one serialized tensor in memory at a time.

    Protobuf merges repeated occurrences of a singular message field, so the file
    is the model without the main graph's initializers, followed by one `graph`
    field per initializer (each a GraphProto holding just that initializer). Every
    protobuf parser (onnx.load, onnxruntime) reads it back as the one model.
    """
    relist_initializer_inputs(model)  # while the initializers are still registered
    initializers = list(model.graph.initializers.values())
    model.graph.initializers.clear()
    try:
        head = to_proto(model)
    finally:
        for value in initializers:
            model.graph.initializers[value.name] = value
    graph = head.graph.SerializeToString()
    head.ClearField("graph")
    with open(path, "wb") as handle:
        handle.write(head.SerializeToString())
        handle.write(_length_delimited(_GRAPH_FIELD, graph))
        for value in initializers:
            source = value.const_value
            if isinstance(source, ir.ExternalTensor):  # inline its bytes, read through the memory map
                source = ir.Tensor(source.numpy(), dtype=source.dtype, name=value.name)
            tensor = ir.serde.serialize_tensor(source)
            tensor.name = value.name
            chunk = _length_delimited(_INITIALIZER_FIELD, tensor.SerializeToString())
            handle.write(_length_delimited(_GRAPH_FIELD, chunk))


_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


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
