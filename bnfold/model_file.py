"""The one owner of model files: open and validate, load for folding, decide the output layout, save.

A ModelFile is made from a path (`open`), an onnx.ModelProto (`from_proto`) or an
onnx_ir.Model (`from_ir`); nothing is read from data files until `load`. Its life:

    ModelFile.open(path)            validate the structure, and every external-data reference's
                                    path and extent, without reading a byte of data (validation.py)
    .load(external_data)            the onnx-ir model to fold: external tensors memory-mapped,
                                    those of 64 KiB or less read now; IR < 4's initializers,
                                    listed as inputs by rule, unlisted; the output layout decided
    .token(...), .data_name(...)    the output's data-file name, for the no-clobbering checks
    .save(model, stage)             written into the staging folder (output.py) in that layout
    .finish(model)                  the folded model the way the caller gave it: a ModelProto
                                    (sparse initializers and IR < 4 input lists restored) or an
                                    onnx_ir.Model (input lists restored)

Loading undoes what onnx-ir would change on the way back out (a value_info entry per
initializer, IR < 4's input lists); `to_proto` restores what it cannot carry.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx_ir as ir

from bnfold import heap
from bnfold.errors import InputError, first_line
from bnfold.external_data import check_external_data, uses_external_data
from bnfold.ir_walk import initializer_values, subgraphs, tensor_slots
from bnfold.proto_walk import proto_graphs
from bnfold.staging import Stage, data_file_name, data_token
from bnfold.validation import load_checked, validate_proto

logger = logging.getLogger(__name__)

# Stay clear of protobuf's 2 GB limit: the graph, names and attributes need room too.
_INLINE_BUDGET = int(1.8 * 2**30)
EXTERNAL_DATA_MODES = ("auto", "always", "never")
_EXTERNAL_THRESHOLD_BYTES = 1024
_SPARSE_KEY = "bnfold.sparse_initializers"
# External tensors this small are read when loading: mapping the data file once
# per tiny tensor (BN statistics, biases) costs more than reading them.
_READ_AT_LOAD_BYTES = 64 * 1024


class ModelFile:
    """One model, from opening to the save of its folded version (see the module's docstring)."""

    def __init__(
        self,
        label: str,
        proto: onnx.ModelProto | None,
        base_dir: Path | None,
        path: Path | None = None,
        given: ir.Model | None = None,
        external: bool | None = None,
    ) -> None:
        self.label = label
        self.proto = proto  # the structure (large tensors by reference); None for an onnx_ir.Model
        self.base_dir = base_dir  # where its external data lives
        self.path = path  # the model file, when it came from one
        self._given = given
        self.data_files: set[Path] = set()  # resolved data files its tensors read, once loaded
        # whether any tensor refers to a file (external data, or large inline ones read by reference): without,
        # the walks that look for such tensors are skipped (they cost as much as a fold on many-layer graphs)
        if external is None:
            external = proto is not None and uses_external_data(proto)
        self.external = external
        self.layout: int | None = None  # the output's external-data threshold (None: inline), once loaded

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        by_reference: bool = True,
        proto: onnx.ModelProto | None = None,
        external: bool | None = None,
    ) -> ModelFile:
        """`by_reference`: large inline tensors stay in the file (read by reference) rather than in memory;
        only for a model bnfold itself writes (output.py copies them file to file). `proto`: the file's
        structure when the caller already loaded it (validation.load_checked), and `external` whether any of
        its tensors refers to a file."""
        path = Path(path)
        if proto is None:
            proto, externals = load_checked(path, by_reference=by_reference)
            external = bool(externals)
        return cls(str(path), proto, path.resolve().parent, path, external=external)

    @classmethod
    def from_proto(
        cls, proto: onnx.ModelProto, base_dir: str | os.PathLike | None = None, label: str = "model"
    ) -> ModelFile:
        """A ModelProto; one whose tensors live in external data needs `base_dir`, checked as a file's would be."""
        validate_proto(proto, label)
        if not uses_external_data(proto):
            return cls(label, proto, None, external=False)
        if base_dir is None:
            raise InputError(f"{label}: its tensors live in external data; pass base_dir=, the folder they are in")
        check_external_data(proto, Path(base_dir))
        return cls(label, proto, Path(base_dir).resolve(), external=True)

    @classmethod
    def from_ir(cls, model: ir.Model) -> ModelFile:
        return cls("model", None, None, given=model)

    @property
    def structure(self) -> onnx.ModelProto:
        """Its ModelProto (a ModelFile of an onnx_ir.Model has none)."""
        if self.proto is None:
            raise InputError(f"{self.label}: an onnx_ir.Model has no file structure")
        return self.proto

    @property
    def files(self) -> list[Path]:
        """The model file and its data files: what nothing bnfold writes may be."""
        return [] if self.path is None else [self.path, *sorted(self.data_files)]

    def load(self, external_data: str | None = None) -> ir.Model:
        """A fresh onnx-ir model to fold (the caller's own model or file is never changed)."""
        if self._given is not None:
            model = self._given.clone()
            unlist_initializer_inputs(model)
            return model
        with heap.loading():
            model = self._build(external_data)
        return model

    def _build(self, external_data: str | None) -> ir.Model:
        model = to_ir(self.structure, self.label)
        if self.base_dir is not None and self.external:
            ir.external_data.set_base_dir(model.graph, os.fspath(self.base_dir))
        if self.path is not None:
            self.data_files = external_data_files(model, self.path) if self.external else set()
            if external_data is not None:
                size = model_file_bytes(self.path, self.data_files)
                self.layout = external_data_threshold(model, external_data, size, self.path, self.external)
            if self.external:
                read_small_external_tensors(model)  # after the layout: it looks at which tensors are external
        return model

    def finish(self, model: ir.Model) -> onnx.ModelProto | ir.Model:
        """The folded model, of the kind it came as (a path gives an onnx_ir.Model)."""
        if self.proto is not None and self.path is None:
            return to_proto(model)
        relist_initializer_inputs(model)
        return model

    def token(self, *options: str) -> str:
        """Names this write: the input files' identity, the layout and `options` (version, fold options)."""
        return data_token(self.files, *options, str(self.layout))

    def data_name(self, destination: Path, token: str) -> str | None:
        """The output's data file name, or None when the output is inline."""
        return None if self.layout is None else data_file_name(destination, token)

    def save(self, model: ir.Model, stage: Stage) -> int:
        """Write `model` into the staging folder in the decided layout; the bytes written."""
        from bnfold.output import write_model

        write_model(model, stage.model, stage.data, self.layout, self.external)
        return sum(path.stat().st_size for path in (stage.model, stage.data) if path.exists())

    def release(self, model: ir.Model) -> None:
        """Drop the tensors of `model`, written by now, so that the memory maps they hold of the input's files
        close at once: a graph is cyclic, and dropping it frees nothing until the collector runs."""
        if not self.external:
            return
        for value in initializer_values(model):
            value.const_value = None
        for slot in tensor_slots(model):  # tensors in attributes (Constant nodes)
            if isinstance(slot.tensor, ir.ExternalTensor):
                with contextlib.suppress(BufferError):  # still viewed elsewhere: it closes when that goes
                    slot.tensor.release()

    def size(self) -> int:
        """Bytes of the model file and its data files."""
        return 0 if self.path is None else model_file_bytes(self.path, self.data_files)


def read_small_external_tensors(model: ir.Model) -> None:
    """Replace external initializers of at most 64 KiB by in-memory copies, opening each data file once.

    Call it after the layout was decided (it looks at which tensors are external).
    Their paths and extents were checked when the file was loaded (validation.py).
    """
    files: dict[str, BinaryIO] = {}
    try:
        for value in initializer_values(model):
            tensor = value.const_value
            if (
                not isinstance(tensor, ir.ExternalTensor)
                or tensor.nbytes > _READ_AT_LOAD_BYTES
                or tensor.dtype.bitwidth % 8
                or tensor.dtype == ir.DataType.STRING
            ):
                continue
            if tensor.path not in files:
                files[tensor.path] = open(tensor.path, "rb")  # noqa: SIM115 - closed below, once per file
            data = files[tensor.path]
            data.seek(tensor.offset or 0)
            raw = data.read(tensor.nbytes)
            array = np.frombuffer(raw, dtype=np.dtype(tensor.dtype.numpy()).newbyteorder("<"), count=tensor.size)
            value.const_value = ir.Tensor(
                array.reshape(tensor.shape.numpy()),
                dtype=tensor.dtype,
                name=tensor.name,
                doc_string=tensor.doc_string,
                metadata_props=tensor.metadata_props,
            )
    finally:
        for data in files.values():
            data.close()


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


def external_data_files(model: ir.Model, model_file: Path | None = None) -> set[Path]:
    """The resolved data files the model's external tensors (initializers and attributes) read from.

    `model_file` is left out: tensors that refer to it are inline in the file (validation.load_proto).
    """
    paths = {
        Path(slot.tensor.path).resolve() for slot in tensor_slots(model) if isinstance(slot.tensor, ir.ExternalTensor)
    }
    return paths - ({model_file.resolve()} if model_file is not None else set())


def is_inline(tensor: ir.TensorProtocol, model_file: Path | None) -> bool:
    """In memory, or a reference to the model file itself (inline there): not in a data file."""
    return not isinstance(tensor, ir.ExternalTensor) or (
        model_file is not None and Path(tensor.path).resolve() == model_file.resolve()
    )


def model_file_bytes(path: Path, data_files: set[Path]) -> int:
    """The model's size on disk: its file plus the data files it reads (cheap: no tensor is touched)."""
    return path.stat().st_size + sum(data.stat().st_size for data in data_files)


def external_data_threshold(
    model: ir.Model, mode: str, source_bytes: int, model_file: Path | None = None, external: bool = True
) -> int | None:
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
    external_sizes = [
        value.const_value.nbytes
        for value in (initializer_values(model) if external else ())
        if value.const_value is not None and not is_inline(value.const_value, model_file)
    ]
    if external_sizes:
        return min(min(external_sizes), _EXTERNAL_THRESHOLD_BYTES)
    return _EXTERNAL_THRESHOLD_BYTES if too_big else None
