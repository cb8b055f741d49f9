"""The one owner of model files: open and validate, load for folding, decide the output layout, save.

A ModelFile is made from a path (`open`), an onnx.ModelProto (`from_proto`) or an
onnx_ir.Model (`from_ir`); nothing is read from data files until `load`. Its life:

    ModelFile.open(path)            validate the structure, and every external-data reference's
                                    path and extent, without reading a byte of data (validation.py)
    .may_fold(), .copyable(mode)    whether the pass could change anything (model_io/prescreen.py), and whether an
    .copy_through(dst, token)       unchanged model may be copied byte for byte (model_io/copy_through.py)
    .load(external_data)            the onnx-ir model to fold: external tensors memory-mapped,
                                    those of 64 KiB or less read now; IR < 4's initializers,
                                    listed as inputs by rule, unlisted; the output layout decided
    .token(...), .data_name(...)    the output's data-file name, for the no-clobbering checks
    .save(model, stage)             written into the staging folder (model_io/writer.py) in that layout
    .finish(model)                  the folded model the way the caller gave it: a ModelProto
                                    (sparse initializers and IR < 4 input lists restored) or an
                                    onnx_ir.Model (input lists restored)

Loading undoes what onnx-ir would change on the way back out (a value_info entry per
initializer, IR < 4's input lists); `to_proto` restores what it cannot carry
(ir_convert.py). onnx-ir is imported on the first `load`, never for a copy-through.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from bnfold.errors import InputError
from bnfold.model_io import collector
from bnfold.model_io.copy_through import copy_through, self_contained
from bnfold.model_io.external_data import check_external_data, uses_external_data
from bnfold.model_io.prescreen import may_fold
from bnfold.model_io.staging import Stage, data_file_name, data_token
from bnfold.model_io.validation import load_checked, validate_proto

if TYPE_CHECKING:  # onnx-ir loads only when a model is loaded to fold: a copy-through never needs it
    import onnx_ir as ir

logger = logging.getLogger(__name__)


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
        externals: list[onnx.TensorProto] | None = None,
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
        self._externals = externals  # its tensors whose data is not inline in the structure, when opened from a file
        self.layout: int | None = None  # the output's external-data threshold (None: inline), once loaded

    @classmethod
    def open(cls, path: str | os.PathLike, by_reference: bool = True) -> ModelFile:
        """Validate the file's structure and every external-data reference, reading no data.

        `by_reference`: large inline tensors stay in the file (read by reference) rather than in memory.
        """
        path = Path(path)
        proto, externals = load_checked(path, by_reference=by_reference)
        return cls(str(path), proto, path.resolve().parent, path, external=bool(externals), externals=externals)

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

    def may_fold(self) -> bool:
        """False only when the pass certainly finds nothing to fold (prescreen.py: no onnx-ir needed to tell)."""
        return may_fold(self.structure)

    def copyable(self, external_data: str) -> bool:
        """Whether an unchanged model may be copied through byte for byte: it is one self-contained file and
        the output's layout is not forced to external data."""
        return (
            self.path is not None
            and self._externals is not None
            and external_data != "always"
            and self_contained(self._externals, self.path)
        )

    def copy_through(self, destination: Path, token: str) -> int:
        """Write the model file's own bytes to `destination` (staged, durable, atomic); the bytes written."""
        if self.path is None:
            raise AssertionError("only a model file is copied through")
        return copy_through(self.path, destination, token)

    def load(self, external_data: str | None = None) -> ir.Model:
        """A fresh onnx-ir model to fold (the caller's own model or file is never changed)."""
        from bnfold.model_io.ir_convert import unlist_initializer_inputs

        if self._given is not None:
            model = self._given.clone()
            unlist_initializer_inputs(model)
            return model
        with collector.loading():
            model = self._build(external_data)
        return model

    def _build(self, external_data: str | None) -> ir.Model:
        import onnx_ir as ir

        from bnfold.model_io.ir_convert import to_ir
        from bnfold.model_io.output_layout import (
            external_data_files,
            external_data_threshold,
            model_file_bytes,
            read_small_external_tensors,
        )

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
        from bnfold.model_io.ir_convert import relist_initializer_inputs, to_proto

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
        from bnfold.model_io.writer import write_model

        write_model(model, stage.model, stage.data, self.layout, self.external)
        return sum(path.stat().st_size for path in (stage.model, stage.data) if path.exists())

    def release(self, model: ir.Model) -> None:
        """Drop the tensors of `model`, written by now, so that the memory maps they hold of the input's files
        close at once: a graph is cyclic, and dropping it frees nothing until the collector runs."""
        if not self.external:
            return
        import onnx_ir as ir

        from bnfold.graph.ir_walk import initializer_values, tensor_slots

        for value in initializer_values(model):
            value.const_value = None
        for slot in tensor_slots(model):  # tensors in attributes (Constant nodes)
            if isinstance(slot.tensor, ir.ExternalTensor):
                with contextlib.suppress(BufferError):  # still viewed elsewhere: it closes when that goes
                    slot.tensor.release()

    def size(self) -> int:
        """Bytes of the model file and its data files."""
        from bnfold.model_io.output_layout import model_file_bytes

        return 0 if self.path is None else model_file_bytes(self.path, self.data_files)
