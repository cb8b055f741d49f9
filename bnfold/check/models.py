"""The two models a check compares: their structure (external data not loaded) and the folder their data lives in."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from bnfold.check.sessions import Session, lacks_kernel, open_session
from bnfold.errors import InputError, first_line

if TYPE_CHECKING:
    import onnx_ir as ir


@dataclass
class Source:
    """A model for the check: its structure (external data not loaded) and the folder its data lives in."""

    proto: onnx.ModelProto
    base_dir: Path | None

    def session(
        self,
        extra_outputs: Iterable[str] = (),
        overridable: Iterable[onnx.TensorProto] = (),
        edit: Callable[[onnx.GraphProto], None] | None = None,
    ) -> Session:
        return open_session(self.proto, self.base_dir, extra_outputs, overridable, edit)

    def load_refusal(self) -> str | None:
        """Why onnxruntime does not load this model as it is, other than a missing kernel; None when it loads."""
        try:
            self.session().close()
        except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
            return None if lacks_kernel(error) else first_line(error)
        return None

    def with_data(self) -> onnx.ModelProto:
        """A copy with every tensor's data inline (for the float32 conversions)."""
        copy = onnx.ModelProto.FromString(self.proto.SerializeToString())
        if self.base_dir is not None:
            onnx.external_data_helper.load_external_data_for_model(copy, os.fspath(self.base_dir))
        return copy


def source_of(
    model: onnx.ModelProto | ir.Model | str | os.PathLike, base_dir: str | os.PathLike | None, label: str
) -> Source:
    """A Source for a path (validated as bnfold validates its input), a ModelProto or an onnx_ir.Model."""
    from bnfold.model_io.external_data import check_external_data, uses_external_data
    from bnfold.model_io.validation import load_proto, validate_proto

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        return Source(load_proto(path, by_reference=True), path.resolve().parent)
    if isinstance(model, onnx.ModelProto):
        validate_proto(model, label)
        if not uses_external_data(model):
            return Source(model, None)
        if base_dir is None:
            raise InputError(f"{label}: the model keeps tensors in external data; pass base_dir=, their folder")
        check_external_data(model, Path(base_dir))
        return Source(model, Path(base_dir).resolve())
    import onnx_ir as ir

    if isinstance(model, ir.Model):
        from bnfold.model_io.ir_convert import to_proto

        external = [t for t in ir_tensors(model) if isinstance(t, ir.ExternalTensor)]
        folder = Path(external[0].base_dir) if external else None
        return Source(to_proto(model.clone()), folder)
    raise InputError(f"cannot check a {type(model).__name__}; pass a path, onnx.ModelProto or onnx_ir.Model")


def ir_tensors(model):
    from bnfold.graph.ir_walk import tensor_slots

    return (slot.tensor for slot in tensor_slots(model))


def tensor_reader(*sources: Source):
    folders = {id(source.proto): source.base_dir for source in sources}

    def read(model: onnx.ModelProto, tensor: TensorProto) -> np.ndarray:
        folder = folders.get(id(model))
        return numpy_helper.to_array(tensor, os.fspath(folder) if folder is not None else "")

    return read
