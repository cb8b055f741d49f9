"""The Python API: fold a model in memory, or fold a file into another file.

    fold(model)          ModelFile → run_pass → the folded model, of the kind given
    fold_file(src, dst)  ModelFile.open → run_pass → save (staged) → check → commit (file_run.py)

onnx-ir (and the pass, I/O and check built on it) are imported inside the
functions, after the input has been validated with onnx alone: a bad path or a
broken file is refused in a fraction of the time the full import takes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from bnfold.errors import BnfoldError, InputError, first_line
from bnfold.report import CheckResult, FoldReport, NodeRecord
from bnfold.words import totals

if TYPE_CHECKING:
    import onnx_ir as ir

ProgressCallback = Callable[[str, int, int], None]


@dataclass
class FoldResult:
    """The folded model (same kind as given: ModelProto in, ModelProto out) and a record per BN."""

    model: onnx.ModelProto | ir.Model
    records: list[NodeRecord] = field(default_factory=list)
    check: CheckResult | None = None  # None: not asked for, nothing changed, or not possible (`check_note` says)
    check_note: str | None = None  # why there is no check, when one was asked for
    backed_out: list[str] = field(default_factory=list)  # folds undone because they failed the check

    @property
    def report(self) -> FoldReport:
        return FoldReport(records=list(self.records), check=self.check, backed_out=list(self.backed_out))

    def __repr__(self) -> str:
        report = self.report
        return f"FoldResult({type(self.model).__name__}: {totals(len(report.batch_norms()), report.counts())})"

    __str__ = __repr__


def fold(
    model: onnx.ModelProto | ir.Model | str | os.PathLike | Any,
    *,
    standalone: str = "bn",
    bn_only: bool = False,
    base_dir: str | os.PathLike | None = None,
    check: bool = True,
    strict: bool = False,
    inputs: Mapping[str, np.ndarray] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> FoldResult:
    """Fold every BatchNormalization that can be folded.

    `model` is an onnx.ModelProto (an onnx.ModelProto comes back), an onnx_ir.Model
    (a new onnx_ir.Model comes back; the one given is not changed), an
    onnx-graphsurgeon Graph (a new Graph comes back; needs the `graphsurgeon` extra)
    or a path (an onnx_ir.Model comes back). `standalone` is what a BN with nothing
    to fold into becomes: "bn" (it stays one BatchNormalization, absorbing its
    per-channel Mul/Add neighbours) or "mul-add". Mul/Add/Sub/Div by a per-channel
    constant next to a linear layer fold too, BN or not, unless `bn_only`. A ModelProto
    whose tensors live in external data needs `base_dir`, the folder they are in: its
    locations are checked there as a file's are (never read relative to the current
    folder).

    The result is checked against the original on onnxruntime, as `fold_file` checks
    (`inputs`/`shapes` as there). Folds that fail the check are backed out, the model
    folded again without them and checked again (`backed_out` names them, their
    records say why); with `strict`, a failed check raises CheckFailedError instead.
    `check=False` skips it. When the model cannot be checked (onnxruntime cannot run
    it), `check` is None and `check_note` says why.
    """
    if _is_graphsurgeon_graph(model):
        return _fold_graphsurgeon(model, standalone, bn_only, check)
    from bnfold.check.comparison import Tolerance
    from bnfold.folding.fold_pass import PassOptions, run_pass
    from bnfold.runs.in_memory import check_in_memory

    options = PassOptions(standalone, bn_only)
    source = _model_file(model, base_dir)
    outcome = run_pass(source.load(), options)
    if not check or not outcome.sites:
        return FoldResult(source.finish(outcome.model), outcome.records)
    checked = check_in_memory(source, outcome, options, Tolerance(), inputs or {}, shapes or {}, strict)
    return FoldResult(
        source.finish(checked.outcome.model), checked.outcome.records, checked.result, checked.note, checked.backed_out
    )


def _model_file(model, base_dir: str | os.PathLike | None):
    from bnfold.model_io.model_file import ModelFile

    if isinstance(model, onnx.ModelProto):
        return ModelFile.from_proto(model, base_dir)
    if isinstance(model, (str, os.PathLike)):
        return ModelFile.open(model, by_reference=False)  # the model goes back to the caller: no references
    import onnx_ir as ir

    if isinstance(model, ir.Model):
        return ModelFile.from_ir(model)
    raise InputError(f"cannot fold a {type(model).__name__}; pass an onnx.ModelProto, onnx_ir.Model or path")


def _is_graphsurgeon_graph(model) -> bool:
    return type(model).__module__.startswith("onnx_graphsurgeon") and type(model).__name__ == "Graph"


def _fold_graphsurgeon(graph, standalone: str, bn_only: bool, check: bool) -> FoldResult:
    """onnx-graphsurgeon interop (extra `graphsurgeon`): a gs.Graph in, a gs.Graph back."""
    import onnx_graphsurgeon as gs

    folded = fold(gs.export_onnx(graph), standalone=standalone, bn_only=bn_only, check=check)
    return dataclasses.replace(folded, model=gs.import_onnx(folded.model))


def fold_file(
    src: str | os.PathLike,
    dst: str | os.PathLike | None,
    *,
    check: bool = True,
    standalone: str = "bn",
    bn_only: bool = False,
    external_data: str = "auto",
    dry_run: bool = False,
    inputs: Mapping[str, np.ndarray] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    strict: bool = False,
    report: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> FoldReport:
    """Fold `src`, check it against the original (unless `check=False`), write `dst`.

    The output is staged beside `dst` (its folder is created if need be) and renamed
    into place only after the check; on CheckFailedError nothing is written. The
    check's verdict is "passed", "failed" (CheckFailedError) or "inconclusive"
    (nothing differed, but no changed value held evidence): written, unless `strict`,
    which raises CheckFailedError. A model with nothing to fold is written as it is,
    without a check. `dry_run` folds in memory and writes nothing (and does not
    check); its report carries per-BN diagnostics. `shapes` maps input names to
    shapes for the check ("" for the model's only input). `report`: where the JSON
    report goes, written atomically, also when the run fails (then with `error`);
    it may not be any of the model files. Nothing bnfold writes may be one of its
    inputs. `progress(step, done, total)` is told about loading, folding, writing,
    checking. Raises InputError (a missing or broken file, bad options),
    CheckFailedError or OutputError.
    """
    from bnfold.check.comparison import Tolerance
    from bnfold.folding.options import PassOptions
    from bnfold.runs.file_run import CheckRequest, FileRun, write_failure_report, write_report

    result = FoldReport(model=os.fspath(src))
    started = time.perf_counter()
    report_path = None if report is None else Path(report)
    destination = None if dst is None else Path(dst)
    try:
        run = FileRun(
            Path(src),
            destination,
            check and not dry_run,
            dry_run,
            PassOptions(standalone, bn_only),
            external_data,
            CheckRequest(Tolerance(rtol, atol), inputs or {}, shapes or {}, strict),
            progress,
            report_path,
        )
        run.run(result)
    except BnfoldError as error:
        result.error, result.exit_code = first_line(error, 500), error.exit_code
        result.seconds = time.perf_counter() - started
        write_failure_report(report_path, result.to_json(), [Path(src), destination])
        raise
    result.seconds = time.perf_counter() - started
    write_report(report_path, result)
    return result
