"""External-data references: refused before a byte of data is read when they could leave the model's folder
or overrun a file (the cases behind onnx's CVE-2022-25882, CVE-2024-27318 and CVE-2025-51480)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnx

from bnfold.errors import InputError
from bnfold.graph.proto_walk import proto_tensors
from bnfold.model_io.element_sizes import itemsize_of


def uses_external_data(proto: onnx.ModelProto) -> bool:
    """Whether any tensor of the model keeps its data in an external file."""
    return any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in proto_tensors(proto))


def check_external_data(
    proto: onnx.ModelProto, base_dir: Path, model_file: Path | None = None, externals: list | None = None
) -> None:
    """Refuse external-data references that could leave the model's folder or overrun a file.

    Covers the cases behind onnx's CVE-2022-25882, CVE-2024-27318 and CVE-2025-51480:
    absolute locations, '..', symlinks out of the folder, and out-of-range offsets.
    References to `model_file` itself (load_proto's by_reference) are checked for extent only.
    `externals`: the external tensors, when validate_proto already found them.
    """
    base = base_dir.resolve()
    own = model_file.resolve() if model_file is not None else None
    file_sizes: dict[str, int] = {}  # checked once per location, however many tensors it holds
    for tensor in proto_tensors(proto) if externals is None else externals:
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
    """A large inline tensor read by reference (wire_format.py): it must hold exactly as much data as its dims claim."""
    itemsize = itemsize_of(tensor.data_type)
    claimed = None if itemsize is None else math.prod(tensor.dims) * itemsize
    try:
        held, offset = int(info.get("length", "0")), int(info.get("offset", "0"))
    except ValueError:
        raise InputError(f"{label}: tensor '{tensor.name}': offset/length are not integers") from None
    if claimed is not None and held != claimed:
        raise InputError(f"{label}: tensor '{tensor.name}' claims {claimed} bytes but holds {held}")
    if offset < 0 or held < 0 or offset + held > path.stat().st_size:
        raise InputError(f"{label}: tensor '{tensor.name}' lies past the end of the file")


def _checked_file_size(base: Path, location: str, where: str) -> int:
    """The size of the data file at `location`, once it is known to be a file inside `base`."""
    if not location:
        raise InputError(f"{where} has no location")
    if any(ord(char) < 32 for char in location):
        raise InputError(f"{where}: location {location!r} holds a control character")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
        raise InputError(f"{where}: absolute location '{location}' is refused")
    if ".." in location.replace("\\", "/").split("/"):
        raise InputError(f"{where}: location '{location}' leaves the model's folder")
    try:
        target = (base / location).resolve()
        if base not in target.parents:
            raise InputError(f"{where}: location '{location}' leads outside the model's folder")
        if not target.is_file():
            raise InputError(f"{where}: file '{location}' does not exist")
        status = target.stat()
    except (OSError, ValueError) as error:  # a name too long, a loop of links
        raise InputError(f"{where}: cannot read '{location}' ({getattr(error, 'strerror', None) or error})") from None
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
