"""The Python API: fold a model in memory, or fold a file into another file.

onnx-ir (and the pass, I/O and check built on it) are imported inside the
functions, after the input has been validated with onnx alone: a bad path or a
broken file is refused in a fraction of the time the full import takes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from bnfold.compare import Tolerance
from bnfold.errors import CheckFailedError, InputError
from bnfold.report import BnRecord, FoldReport, Site
from bnfold.validation import check_output_path, load_proto, validate_proto

if TYPE_CHECKING:
    import onnx_ir as ir

logger = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """The folded model (same kind as given: ModelProto in, ModelProto out) and a record per BN."""

    model: onnx.ModelProto | ir.Model
    records: list[BnRecord] = field(default_factory=list)

    @property
    def report(self) -> FoldReport:
        return FoldReport(records=list(self.records))


def fold(model, *, standalone: str = "bn") -> FoldResult:
    """Fold every BatchNormalization that can be folded.

    `model` is an onnx.ModelProto (an onnx.ModelProto comes back), an onnx_ir.Model
    (a new onnx_ir.Model comes back; the one given is not changed), an
    onnx-graphsurgeon Graph (a new Graph comes back; needs the `graphsurgeon` extra)
    or a path (an onnx_ir.Model comes back). `standalone` is what a BN with nothing
    to fold into becomes: "bn" (it stays one BatchNormalization, absorbing its
    per-channel Mul/Add neighbours) or "mul-add". Nothing is verified here: see
    `verify` and `fold_file`.
    """
    if isinstance(model, onnx.ModelProto):
        validate_proto(model, "model")
        from bnfold.model_io import to_ir, to_proto

        folded, records, _ = _run_pass(to_ir(model, "model"), standalone)
        return FoldResult(to_proto(folded), records)
    if _is_graphsurgeon_graph(model):
        return _fold_graphsurgeon(model, standalone)
    if isinstance(model, (str, os.PathLike)):
        proto = load_proto(Path(model))
        from bnfold.model_io import load_model

        return FoldResult(*_run_pass(load_model(model, proto), standalone)[:2])
    import onnx_ir as ir

    if isinstance(model, ir.Model):
        from bnfold.model_io import relist_initializer_inputs, unlist_initializer_inputs

        clone = model.clone()
        unlist_initializer_inputs(clone)
        folded, records, _ = _run_pass(clone, standalone)
        relist_initializer_inputs(folded)
        return FoldResult(folded, records)
    raise InputError(f"cannot fold a {type(model).__name__}; pass an onnx.ModelProto, onnx_ir.Model or path")


def _is_graphsurgeon_graph(model) -> bool:
    return type(model).__module__.startswith("onnx_graphsurgeon") and type(model).__name__ == "Graph"


def _fold_graphsurgeon(graph, standalone: str) -> FoldResult:
    """onnx-graphsurgeon interop (extra `graphsurgeon`): a gs.Graph in, a gs.Graph back."""
    import onnx_graphsurgeon as gs

    folded = fold(gs.export_onnx(graph), standalone=standalone)
    return FoldResult(gs.import_onnx(folded.model), folded.records)


def _run_pass(model: ir.Model, standalone: str, progress=None) -> tuple[ir.Model, list[BnRecord], list[Site]]:
    from bnfold.fold_pass import BatchNormFoldPass

    fold_pass = BatchNormFoldPass(standalone=standalone, progress=progress)
    result = fold_pass(model)
    return result.model, fold_pass.records, fold_pass.sites


def fold_file(src: str | os.PathLike, dst: str | os.PathLike | None, *, check: bool = True,
              standalone: str = "bn", external_data: str = "auto", dry_run: bool = False,
              inputs: Mapping[str, np.ndarray] | None = None,
              shapes: Mapping[str, tuple[int, ...]] | None = None,
              rtol: float | None = None, atol: float | None = None, strict: bool = False,
              progress=None) -> FoldReport:
    """Fold `src`, check it against the original (unless `check=False`), write `dst`.

    The output is staged beside `dst` and renamed into place only after the check;
    on CheckFailedError nothing is written. The check's verdict is "passed",
    "failed" (CheckFailedError) or "inconclusive" (nothing differed, but no changed
    value held evidence): written, unless `strict`, which raises CheckFailedError.
    A model with nothing to fold is written as it is, without a check. `dry_run`
    folds in memory and writes nothing (and does not check); its report carries
    per-BN diagnostics. `progress(step, done, total)` is told about loading,
    folding, writing, checking.
    """
    step = progress or (lambda *_: None)
    if not dry_run:
        if dst is None:
            raise InputError("an output path is needed (or use dry_run)")
        check_output_path(Path(dst))
    step("loading", 0, 1)
    proto = load_proto(Path(src), by_reference=True)
    if check and not dry_run:
        from bnfold.draws import check_user_inputs, input_specs

        check_user_inputs(input_specs(proto), inputs or {}, shapes or {})
    from bnfold.model_io import (
        external_data_files,
        external_data_threshold,
        load_model,
        model_file_bytes,
        read_small_external_tensors,
    )

    model = load_model(src, proto)
    input_data = external_data_files(model, Path(src))
    source_bytes = model_file_bytes(Path(src), input_data)
    external_threshold = external_data_threshold(model, external_data, source_bytes, Path(src))
    read_small_external_tensors(model)
    report = FoldReport(model=os.fspath(src))
    if dry_run:
        from bnfold.explain import diagnose

        report.diagnostics = diagnose(model)
    _, report.records, sites = _run_pass(model, standalone, progress)
    if dry_run:
        return report
    _refuse_overwriting_input_data(Path(src), Path(dst), input_data)
    report.unchanged = not sites
    checker = None
    if check and sites:
        from bnfold.equivalence import Check, Source

        checker = Check(Source(proto, Path(src).resolve().parent), sites, Tolerance(rtol, atol), inputs or {},
                        shapes or {}, seed=0)
    from bnfold.output import StagedOutput

    with StagedOutput(dst) as staged:
        step("writing", 0, 1)
        staged.write(model, external_threshold)
        del model  # its memory-mapped weights go before onnxruntime loads a model: one model in memory at a time
        if checker is not None:
            step("checking", 0, 1)
            checker.original()
            report.check = checker.folded(Source(load_proto(staged.path, by_reference=True), staged.path.parent))
            _judge(report, strict)
        staged.commit()
    logger.info("wrote %s", dst)
    return report


def _judge(report: FoldReport, strict: bool) -> None:
    """Raise CheckFailedError for a failed check (or, with `strict`, an inconclusive one)."""
    check = report.check
    if check.failed:
        failure = check.first_failure()
        where = f"at BatchNormalization {failure.bn}, " if failure.bn else ""
        kind = "site" if failure in check.sites else "output"
        channel = f" channel {failure.channel}" if failure.channel is not None else ""
        raise CheckFailedError(
            f"check failed {where}{kind} '{failure.name}'{channel} differs (max abs err {failure.max_abs_err:.3e}, "
            f"max rel err {failure.max_rel_err:.3e}); nothing written", report)
    if check.verdict == "inconclusive" and strict:
        raise CheckFailedError("check inconclusive: no value a fold changed held evidence (all NaN/Inf, constant "
                               "or never reached); nothing written (--strict)", report)


def _refuse_overwriting_input_data(src: Path, dst: Path, input_data: set[Path]) -> None:
    """The output's data file must not replace a data file the (different) input still needs."""
    if dst.exists() and src.resolve() == dst.resolve():
        return
    data = (dst.parent / f"{dst.name}.data").resolve()
    if data in input_data:
        raise InputError(f"{dst}: its data file would overwrite '{data.name}', which the input still uses")
