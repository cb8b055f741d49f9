"""Bytes per element of ONNX data types, including those packed several to a byte."""

from __future__ import annotations

import onnx

# Types packed several elements to a byte: their element counts are not field lengths.
SUB_BYTE_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, name)
}
SUB_BYTE_TYPES = frozenset(SUB_BYTE_BITS)
_COMMON: dict[int, int] = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.BOOL: 1,
}


def packed_bytes(data_type: int, elements: int) -> int | None:
    """Bytes of `elements` values of a type packed several to a byte (INT4: two), rounded up."""
    bits = SUB_BYTE_BITS.get(data_type)
    return None if bits is None else (elements * bits + 7) // 8


def itemsize_of(data_type: int) -> int | None:
    """Bytes per element of an ONNX data type, or None where that is not a fixed whole number."""
    if data_type in _COMMON:
        return _COMMON[data_type]  # the types of nearly every tensor, without a lookup through onnx.helper
    if data_type in SUB_BYTE_TYPES or data_type == onnx.TensorProto.STRING:
        return None
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
