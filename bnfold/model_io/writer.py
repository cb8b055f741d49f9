"""Writing the folded model into the staging folder (staging.py puts it in place).

Both layouts are written tensor by tensor, never as one serialized model:
- inline: the model without its initializers, then one `graph` chunk per initializer;
- external data: the model file, plus one data file that tensors are appended to.
A folded weight that was left to be computed while writing (a LazyTensor, see
folding/rules/base.py) is computed in a second thread one tensor ahead of the writer, and
an untouched external tensor is copied file to file (`copy_file_range` where the
platform has it) without passing through Python. On Linux, each finished part of
a file is handed to the kernel for write-back at once, so the fsync that makes
the output durable before it is renamed into place has little left to wait for.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx_ir as ir

from bnfold.errors import OutputError
from bnfold.graph.ir_walk import tensor_slots
from bnfold.model_io.ir_convert import relist_initializer_inputs, to_proto
from bnfold.model_io.wire_format import length_delimited

logger = logging.getLogger(__name__)

# Tensors this large start on a page boundary of the data file, where a reader can map them.
_ALIGNED_TENSOR_BYTES = 1 << 20
_PAGE = 4096
_HAND_OVER_BYTES = 8 << 20
# In-memory tensors up to this size are written as bytes, larger ones straight from their array.
_SMALL_TENSOR_BYTES = 1 << 20


def write_model(
    model: ir.Model, model_path: Path, data_path: Path, external_threshold: int | None, external: bool = True
) -> None:
    """Serialize `model` to `model_path` (the model is not usable afterwards).

    `external_threshold`: tensors of at least this many bytes go to `data_path`, which
    the model refers to by its name (see model_file.external_data_threshold); None
    writes everything inline. `external`: whether any tensor may refer to a file.
    """
    try:
        if external_threshold is None:
            write_inline(model, model_path, external)
        else:
            write_external(model, data_path.parent, data_path.name, external_threshold)
            write_model_file(to_proto(model), model_path)
    except OSError as error:
        raise OutputError(f"{model_path.name}: cannot write it ({error.strerror or error})") from error


class _DurableFile:
    """A file written front to back whose finished part is sent to disk while the rest is still produced."""

    def __init__(self, path: Path) -> None:
        self.handle: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close(), after fsync
        self._handed_over = 0

    def hand_over(self) -> None:
        """Start write-back of what was written so far, without waiting for it (Linux; elsewhere a no-op).

        Done in steps of at least _HAND_OVER_BYTES. POSIX_FADV_DONTNEED writes dirty
        pages back asynchronously and drops only pages already clean, so nothing
        just written is evicted.
        """
        if not hasattr(os, "posix_fadvise") or self.handle.tell() - self._handed_over < _HAND_OVER_BYTES:
            return
        self.handle.flush()
        end = self.handle.tell()
        try:
            os.posix_fadvise(self.handle.fileno(), self._handed_over, end - self._handed_over, os.POSIX_FADV_DONTNEED)
        except OSError:  # advice only: a file system that does not take it still gets the fsync
            logger.debug("posix_fadvise refused on %s", self.handle.name)
        self._handed_over = end

    def __enter__(self) -> _DurableFile:
        return self

    def __exit__(self, exc_type, *_) -> None:
        try:
            if exc_type is None:
                self.handle.flush()
                os.fsync(self.handle.fileno())
        finally:
            self.handle.close()


def write_external(model: ir.Model, folder: Path, data_name: str, threshold: int) -> None:
    """Move every initializer of at least `threshold` bytes into `folder/data_name`, in declaration order.

    Tensor attributes (a Constant's value) of that size move too if the input
    stored them externally; otherwise they stay inline, as onnx.save leaves them.
    Smaller tensors that were external are read into memory, to be written inline.
    """
    moving = []
    for slot in tensor_slots(model):
        tensor = slot.tensor
        big = tensor.nbytes >= threshold and tensor.dtype != ir.DataType.STRING
        if big and (slot.initializer or isinstance(tensor, ir.ExternalTensor)):
            moving.append(slot)
        elif isinstance(tensor, ir.ExternalTensor):
            slot.put(_in_memory(tensor))
    if not moving:
        return  # no empty data file beside the output
    with _DurableFile(folder / data_name) as data, ThreadPoolExecutor(max_workers=1) as pool:
        for slot, tensor in zip(moving, _evaluated_ahead(pool, [slot.tensor for slot in moving]), strict=True):
            offset = _aligned(data.handle.tell(), tensor.nbytes)
            data.handle.seek(offset)
            _tofile(tensor, data.handle)
            data.hand_over()
            slot.put(
                ir.ExternalTensor(
                    data_name,
                    offset,
                    tensor.nbytes,
                    tensor.dtype,
                    shape=ir.Shape(tensor.shape.numpy()),
                    name=slot.name or "",
                    base_dir=str(folder),
                )
            )


def _in_memory(tensor: ir.ExternalTensor) -> ir.Tensor:
    return ir.Tensor(
        tensor.numpy().copy(),
        dtype=tensor.dtype,
        name=tensor.name,
        doc_string=tensor.doc_string,
        metadata_props=tensor.metadata_props,
    )


def _aligned(offset: int, nbytes: int) -> int:
    if nbytes < _ALIGNED_TENSOR_BYTES:
        return offset
    return -(-offset // _PAGE) * _PAGE


def _evaluated_ahead(pool: ThreadPoolExecutor, tensors: Iterable[ir.TensorProtocol]) -> Iterator[ir.TensorProtocol]:
    """`tensors` in order; a LazyTensor comes out computed, in `pool` while the one before it is written.

    At most two computed tensors exist at a time: the one being written and the next.
    """
    queue: deque[ir.TensorProtocol | Future] = deque()
    for tensor in tensors:
        queue.append(pool.submit(tensor.raw) if isinstance(tensor, ir.LazyTensor) else tensor)
        if len(queue) > 1:
            yield _ready(queue.popleft())
    while queue:
        yield _ready(queue.popleft())


def _ready(item: ir.TensorProtocol | Future) -> ir.TensorProtocol:
    return item.result() if isinstance(item, Future) else item


def write_model_file(proto: onnx.ModelProto, path: Path) -> None:
    with _DurableFile(path) as model_file:
        model_file.handle.write(proto.SerializeToString())


def write_inline(model: ir.Model, path: Path, external: bool = True) -> None:
    """Write `model` with its data inline, holding one serialized tensor in memory at a time.

    Protobuf merges repeated occurrences of a singular message field, so the file
    is the model without the main graph's initializers, followed by one `graph`
    field per initializer (each a GraphProto holding just that initializer). Every
    protobuf parser (onnx.load, onnxruntime) reads it back as the one model.
    """
    relist_initializer_inputs(model)  # while the initializers are still registered
    initializers = list(model.graph.initializers.values())
    streamed = {id(value.const_value) for value in initializers}
    for slot in tensor_slots(model) if external else ():  # written with the head: none may point to the input
        if isinstance(slot.tensor, ir.ExternalTensor) and id(slot.tensor) not in streamed:
            slot.put(_in_memory(slot.tensor))
    for name in list(model.graph.initializers):  # by key: clear() pops from the front, quadratic in CPython
        del model.graph.initializers[name]
    try:
        head = to_proto(model)
    finally:
        for value in initializers:
            model.graph.initializers[value.name or ""] = value
    graph = head.graph.SerializeToString()
    head.ClearField("graph")
    with _DurableFile(path) as out, ThreadPoolExecutor(max_workers=1) as pool:
        out.handle.write(head.SerializeToString())
        out.handle.write(_length_delimited(_GRAPH_FIELD, graph))
        tensors = [value.const_value for value in initializers if value.const_value is not None]
        sources = _evaluated_ahead(pool, tensors)
        for value, source in zip([v for v in initializers if v.const_value is not None], sources, strict=True):
            _write_initializer(out.handle, value.name or "", source)
            out.hand_over()


def _write_initializer(handle: BinaryIO, name: str, tensor: ir.TensorProtocol) -> None:
    """One `graph { initializer { …, raw_data } }` chunk.

    Its bytes go straight to the file: from memory for an array, file to file for a
    tensor read by reference (`copy_file_range`), with no serialized copy in between.
    Strings and packed sub-byte types are serialized the usual way.
    """
    if tensor.dtype == ir.DataType.STRING or tensor.dtype.bitwidth % 8:
        if isinstance(tensor, ir.ExternalTensor):
            tensor = _in_memory(tensor)
        proto = ir.serde.serialize_tensor(tensor)
        proto.name = name
        serialized = proto.SerializeToString()
        initializer = length_delimited(_INITIALIZER_FIELD, len(serialized))
        handle.write(length_delimited(_GRAPH_FIELD, len(initializer) + len(serialized)) + initializer + serialized)
        return
    header = _tensor_header(name, tensor)
    data = _small_tensor_bytes(tensor)
    nbytes = len(data) if data is not None else tensor.nbytes
    raw = length_delimited(_RAW_DATA_FIELD, nbytes)
    tensor_bytes = len(header) + len(raw) + nbytes
    initializer = length_delimited(_INITIALIZER_FIELD, tensor_bytes)
    handle.write(length_delimited(_GRAPH_FIELD, len(initializer) + tensor_bytes) + initializer + header + raw)
    if data is not None:
        handle.write(data)
    else:
        _tofile(tensor, handle)


def _small_tensor_bytes(tensor: ir.TensorProtocol) -> bytes | None:
    """The bytes of a small in-memory array (one buffered write; `tofile` flushes and writes per tensor)."""
    array = tensor.raw if isinstance(tensor, ir.Tensor) else None
    if isinstance(array, np.ndarray) and array.nbytes <= _SMALL_TENSOR_BYTES:
        return tensor.tobytes()
    return None


def _tofile(tensor: ir.TensorProtocol, handle: BinaryIO) -> None:
    """The tensor's bytes into `handle`: file to file for a memory-mapped one (onnx-ir's tensors have tofile)."""
    tofile = getattr(tensor, "tofile", None)
    if tofile is not None:
        tofile(handle)
    else:
        handle.write(tensor.tobytes())


def _tensor_header(name: str, tensor: ir.TensorProtocol) -> bytes:
    """The TensorProto fields of `tensor` but its data, serialized."""
    header = onnx.TensorProto(name=name, data_type=tensor.dtype.value, dims=tensor.shape.numpy())
    if tensor.doc_string:
        header.doc_string = tensor.doc_string
    for key, value in (tensor.metadata_props or {}).items():
        header.metadata_props.add(key=key, value=value)
    return header.SerializeToString()


_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return length_delimited(field_number, len(payload)) + payload
