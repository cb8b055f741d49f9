"""onnxruntime sessions of a model with extra outputs, its tensors shared rather than parsed twice.

onnxruntime returns only graph outputs, so the check adds every site as an output.
Serializing a 100 MB model again to add them, and having onnxruntime parse it again,
would cost more than the check itself. Instead the session is built from a skeleton
(the model with each initializer's data replaced by an external-data placeholder),
and each initializer is handed over as an OrtValue that views memory bnfold already
holds: the raw bytes of the parsed protobuf. Initializers stored in external data
stay external: onnxruntime reads them from the model's folder itself. Tensors numpy
cannot view (strings, bfloat16, float8, 4-bit) stay in the skeleton as they are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

logger = logging.getLogger(__name__)

_PLACEHOLDER = "bnfold-shared-initializer"
# Smaller tensors are copied into the skeleton: onnxruntime reads some of them (shapes) while building
# the session, before it takes the shared arrays, and copying them costs nothing.
_SHARED_BYTES = 64 * 1024
# numpy dtypes an OrtValue can view directly, by ONNX data type.
_VIEWABLE: dict[int, type] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
    TensorProto.INT8: np.int8,
    TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64,
    TensorProto.UINT8: np.uint8,
    TensorProto.UINT16: np.uint16,
    TensorProto.UINT32: np.uint32,
    TensorProto.UINT64: np.uint64,
    TensorProto.BOOL: np.bool_,
}


class Session:
    """An onnxruntime session and the memory its initializers view; `close()` lets both go."""

    def __init__(self, session, keep_alive: list) -> None:
        self.session = session
        self._keep_alive = keep_alive

    @property
    def output_names(self) -> list[str]:
        return [output.name for output in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        names = names or self.output_names
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def close(self) -> None:
        self.session = None
        self._keep_alive = []


def lacks_kernel(error: BaseException | None) -> bool:
    """Whether onnxruntime refused a model only for want of a kernel (NOT_IMPLEMENTED)."""
    return error is not None and (type(error).__name__ == "NotImplemented" or "NOT_IMPLEMENTED" in str(error))


def session_options():
    import onnxruntime as ort  # slow to import, and only the check needs it

    ort.set_default_logger_severity(4)  # the environment's own log lines too: none reach the terminal
    options = ort.SessionOptions()
    # ORT's own BASIC level already folds BN: it would hide a wrong fold.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # its messages go into bnfold's own, never to the terminal
    return options


def open_session(
    model: onnx.ModelProto,
    base_dir: Path | None,
    extra_outputs: Iterable[str] = (),
    overridable: Iterable[onnx.TensorProto] = (),
    edit: Callable[[onnx.GraphProto], None] | None = None,
) -> Session:
    """A session of `model` (as loaded, external data not read) that also returns `extra_outputs`.

    The `overridable` initializers are also listed as graph inputs: a run may feed other values for them.
    `edit`, when given, changes the session's copy of the main graph (never `model`).
    """
    import onnxruntime as ort

    skeleton, names, arrays = _skeleton(model, list(extra_outputs))
    _make_overridable(skeleton.graph, list(overridable))
    if edit is not None:
        edit(skeleton.graph)
    options = session_options()
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays]
    if names:
        options.add_external_initializers(names, values)
    if base_dir is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", os.fspath(base_dir))
    session = ort.InferenceSession(skeleton.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return Session(session, [model, arrays, values])


def _make_overridable(graph: onnx.GraphProto, tensors: list[onnx.TensorProto]) -> None:
    """List `tensors` as graph inputs too; a Constant node producing one becomes an initializer first."""
    if not tensors:
        return
    names = {tensor.name for tensor in tensors}
    initializers = {tensor.name for tensor in graph.initializer}
    hoisted = [t for t in tensors if t.name not in initializers]
    if hoisted:
        kept = [n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] in names)]
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(hoisted)
    listed = {value.name for value in graph.input}
    graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in tensors if t.name not in listed
    )


def _skeleton(model: onnx.ModelProto, extra_outputs: list[str]) -> tuple[onnx.ModelProto, list[str], list]:
    """The model with its viewable inline initializers as placeholders; their names and numpy views."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    graph = skeleton.graph
    _copy_fields(model.graph, graph, skip="initializer")
    names, arrays = [], []
    for tensor in model.graph.initializer:
        array = _view(tensor)
        if array is None:
            graph.initializer.append(tensor)
            continue
        graph.initializer.append(_placeholder(tensor, array.nbytes))
        names.append(tensor.name)
        arrays.append(array)
    present = {output.name for output in graph.output}
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in dict.fromkeys(extra_outputs) if name not in present)
    return skeleton, names, arrays


def _copy_fields(source, target, skip: str) -> None:
    """Copy every set field of protobuf message `source` into `target`, except field `skip`."""
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if _repeated(descriptor):
            getattr(target, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def _repeated(descriptor) -> bool:
    # protobuf ≥ 6 has is_repeated; older versions only label.
    repeated = getattr(descriptor, "is_repeated", None)
    return repeated if repeated is not None else descriptor.label == descriptor.LABEL_REPEATED


def _view(tensor: TensorProto) -> np.ndarray | None:
    """A read-only numpy view of an inline tensor's raw bytes (no copy); None when it cannot be viewed."""
    dtype = _VIEWABLE.get(int(tensor.data_type))
    if (
        dtype is None
        or tensor.data_location == TensorProto.EXTERNAL
        or not tensor.HasField("raw_data")
        or len(tensor.raw_data) < _SHARED_BYTES
    ):
        return None
    array = np.frombuffer(tensor.raw_data, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.dtype.byteorder == ">":  # pragma: no cover - big-endian hosts
        array = array.astype(array.dtype.newbyteorder("="))
    return array.reshape(tuple(tensor.dims))


def _placeholder(tensor: TensorProto, nbytes: int) -> TensorProto:
    """Name, type and shape of `tensor`, its data "external": onnxruntime takes the shared array instead."""
    stub = TensorProto(
        name=tensor.name, data_type=tensor.data_type, dims=tensor.dims, data_location=TensorProto.EXTERNAL
    )
    for key, value in (("location", _PLACEHOLDER), ("offset", "0"), ("length", str(nbytes))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    return stub
