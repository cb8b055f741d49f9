"""Reading a model file's structure without its large inline tensors, from the protobuf wire format.

`onnx.load` parses a 100 MB model into memory, and every later read of a tensor's
`raw_data` copies it again. `strip_large_tensors` instead walks the file's fields,
copies everything but the `raw_data` of large main-graph initializers, and turns each
of those into an external-data reference to the model file itself (its offset and
length there). The result is a small ModelProto: onnx-ir maps those tensors lazily,
untouched ones are copied file to file, and onnxruntime reads them from the file.

Protobuf semantics are kept: a singular message field that occurs several times
merges (a model whose initializers come in several `graph` chunks, as bnfold writes
them), and for a singular scalar field the last occurrence wins.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import onnx

GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
EXTERNAL_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["external_data"].number
DATA_LOCATION = onnx.TensorProto.DESCRIPTOR.fields_by_name["data_location"].number
_KEY = onnx.StringStringEntryProto.DESCRIPTOR.fields_by_name["key"].number
_VALUE = onnx.StringStringEntryProto.DESCRIPTOR.fields_by_name["value"].number
_LENGTH_DELIMITED, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5
# Tensors at least this large become references to the file; smaller ones are parsed as usual.
LARGE_TENSOR_BYTES = 64 * 1024


class WireError(ValueError):
    """The bytes are not a protobuf message this reader follows (it then falls back to onnx.load)."""


def strip_large_tensors(path: Path) -> tuple[onnx.ModelProto, int]:
    """The model at `path` with every large inline main-graph initializer as a reference to `path` itself.

    Returns the ModelProto and how many tensors were turned into references.
    Raises WireError when the file does not parse as this reader expects.
    """
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        buffer = memoryview(mapped)
        try:
            stripped, count = _strip_model(buffer, path.name)
        finally:
            buffer.release()
    model = onnx.ModelProto()
    try:
        model.ParseFromString(stripped)
    except Exception as error:  # protobuf raises several types for bad input
        raise WireError(str(error)) from error
    return model, count


def _strip_model(buffer: memoryview, location: str) -> tuple[bytes, int]:
    out, count = bytearray(), 0
    for number, wire, start, end, payload in _fields(buffer, 0, len(buffer)):
        if number == GRAPH and wire == _LENGTH_DELIMITED:
            graph, found = _strip_graph(buffer, payload, end, location)
            out += _key(GRAPH) + _varint(len(graph)) + graph
            count += found
        else:
            out += buffer[start:end]
    return bytes(out), count


def _strip_graph(buffer: memoryview, begin: int, end: int, location: str) -> tuple[bytes, int]:
    """The graph's bytes with its large initializers as references; unchanged runs of fields copied at once."""
    out, count, kept_from = bytearray(), 0, begin
    for number, wire, start, stop, payload in _fields(buffer, begin, end):
        if number != INITIALIZER or wire != _LENGTH_DELIMITED or stop - payload < LARGE_TENSOR_BYTES:
            continue  # cannot hold a large raw_data: kept with the run it is in
        tensor = _reference(buffer, payload, stop, location)
        if tensor is None:
            continue
        out += buffer[kept_from:start]
        out += _key(INITIALIZER) + _varint(len(tensor)) + tensor
        kept_from = stop
        count += 1
    out += buffer[kept_from:end]
    return bytes(out), count


def _reference(buffer: memoryview, begin: int, end: int, location: str) -> bytes | None:
    """The tensor at buffer[begin:end] with its raw_data as a reference to the file; None to keep it as it is."""
    kept, raw, external = bytearray(), None, False
    for number, wire, start, stop, payload in _fields(buffer, begin, end):
        if number == RAW_DATA and wire == _LENGTH_DELIMITED:
            raw = (payload, stop - payload)  # a repeated singular field: the last one wins
        else:
            external |= number in (EXTERNAL_DATA, DATA_LOCATION)
            kept += buffer[start:stop]
    if raw is None or external or raw[1] < LARGE_TENSOR_BYTES:
        return None
    for key, value in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1]))):
        entry = _string_field(_KEY, key) + _string_field(_VALUE, value)
        kept += _key(EXTERNAL_DATA) + _varint(len(entry)) + entry
    kept += _varint(DATA_LOCATION << 3 | _VARINT) + _varint(onnx.TensorProto.EXTERNAL)
    return bytes(kept)


def _fields(buffer: memoryview, begin: int, end: int):
    """(field number, wire type, field start, field end, payload start) of each field in buffer[begin:end]."""
    position = begin
    while position < end:
        start = position
        key, position = _read_varint(buffer, position, end)
        number, wire = key >> 3, key & 7
        payload = position
        if wire == _VARINT:
            _, position = _read_varint(buffer, position, end)
        elif wire == _FIXED64:
            position += 8
        elif wire == _FIXED32:
            position += 4
        elif wire == _LENGTH_DELIMITED:
            length, payload = _read_varint(buffer, position, end)
            position = payload + length
        else:
            raise WireError(f"wire type {wire} at byte {start}")
        if position > end or number == 0:
            raise WireError(f"field at byte {start} runs past its message")
        yield number, wire, start, position, payload


def _read_varint(buffer: memoryview, position: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= end or shift > 63:
            raise WireError(f"bad varint at byte {position}")
        byte = buffer[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
        shift += 7


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _key(number: int) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED)


def _string_field(number: int, text: str) -> bytes:
    data = text.encode()
    return _key(number) + _varint(len(data)) + data


def length_delimited(field_number: int, payload_length: int) -> bytes:
    """The key and length that precede a length-delimited field of `payload_length` bytes."""
    return _key(field_number) + _varint(payload_length)
