"""The output's layout and what loading reads at once: which tensors go to a data file, which are read now.

`external_data_threshold` decides the layout (tensors of at least that many bytes are
written to OUT.<token>.data; None: all inline); `read_small_external_tensors` reads the
external tensors too small to be worth a memory map.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx_ir as ir

from bnfold.errors import InputError
from bnfold.graph.ir_walk import initializer_values, tensor_slots

# Stay clear of protobuf's 2 GB limit: the graph, names and attributes need room too.
_INLINE_BUDGET = int(1.8 * 2**30)
EXTERNAL_DATA_MODES = ("auto", "always", "never")
_EXTERNAL_THRESHOLD_BYTES = 1024
# External tensors this small are read when loading: mapping the data file once
# per tiny tensor (BN statistics, biases) costs more than reading them.
_READ_AT_LOAD_BYTES = 64 * 1024


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
