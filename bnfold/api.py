"""The Python API: fold a model in memory, or fold a file into another file.

onnx-ir (and the pass, I/O and check built on it) are imported inside the
functions, after the input has been validated with onnx alone: a bad path or a
broken file is refused in a fraction of the time the full import takes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import onnx

from bnfold import __version__
from bnfold.compare import Tolerance
from bnfold.errors import BnfoldError, CheckFailedError, InputError, first_line
from bnfold.report import CheckResult, FoldReport, NodeRecord, Site, totals
from bnfold.staging import (
    Stage,
    check_output_path,
    check_report_path,
    data_file_name,
    data_token,
    refuse_clobbering,
    same_file,
    write_atomically,
)
from bnfold.validation import check_external_data, load_proto, uses_external_data, validate_proto

if TYPE_CHECKING:
    import onnx_ir as ir

logger = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """The folded model (same kind as given: ModelProto in, ModelProto out) and a record per BN."""

    model: onnx.ModelProto | ir.Model
    records: list[NodeRecord] = field(default_factory=list)

    @property
    def report(self) -> FoldReport:
        return FoldReport(records=list(self.records))

    def __repr__(self) -> str:
        report = self.report
        return f"FoldResult({type(self.model).__name__}: {totals(len(report.batch_norms()), report.counts())})"

    __str__ = __repr__


def fold(model: onnx.ModelProto | ir.Model | str | os.PathLike | Any, *, standalone: str = "bn",
         bn_only: bool = False, base_dir: str | os.PathLike | None = None) -> FoldResult:
    """Fold every BatchNormalization that can be folded.

    `model` is an onnx.ModelProto (an onnx.ModelProto comes back), an onnx_ir.Model
    (a new onnx_ir.Model comes back; the one given is not changed), an
    onnx-graphsurgeon Graph (a new Graph comes back; needs the `graphsurgeon` extra)
    or a path (an onnx_ir.Model comes back). `standalone` is what a BN with nothing
    to fold into becomes: "bn" (it stays one BatchNormalization, absorbing its
    per-channel Mul/Add neighbours) or "mul-add". Mul/Add/Sub/Div by a per-channel
    constant next to a linear layer fold too, BN or not, unless `bn_only`. A ModelProto whose tensors live in
    external data needs `base_dir`, the folder they are in: its locations are checked
    there as a file's are (never read relative to the current folder). Nothing is
    verified here: see `verify` and `fold_file`.
    """
    from bnfold.fold_pass import check_standalone

    options = _PassOptions(check_standalone(standalone), bn_only)
    if isinstance(model, onnx.ModelProto):
        return _fold_proto(model, options, base_dir)
    if _is_graphsurgeon_graph(model):
        return _fold_graphsurgeon(model, options)
    if isinstance(model, (str, os.PathLike)):
        proto = load_proto(Path(model))
        from bnfold.model_io import load_model

        return FoldResult(*_run_pass(load_model(model, proto), options)[:2])
    import onnx_ir as ir

    if isinstance(model, ir.Model):
        from bnfold.model_io import relist_initializer_inputs, unlist_initializer_inputs

        clone = model.clone()
        unlist_initializer_inputs(clone)
        folded, records = _run_pass(clone, options)[:2]
        relist_initializer_inputs(folded)
        return FoldResult(folded, records)
    raise InputError(f"cannot fold a {type(model).__name__}; pass an onnx.ModelProto, onnx_ir.Model or path")


def _fold_proto(model: onnx.ModelProto, options: _PassOptions, base_dir: str | os.PathLike | None) -> FoldResult:
    validate_proto(model, "model")
    from bnfold.model_io import to_ir, to_proto

    ir_model = to_ir(model, "model")
    if uses_external_data(model):
        if base_dir is None:
            raise InputError("model: its tensors live in external data; pass base_dir=, the folder they are in")
        check_external_data(model, Path(base_dir))
        import onnx_ir as ir

        ir.external_data.set_base_dir(ir_model.graph, os.fspath(Path(base_dir).resolve()))
    folded, records = _run_pass(ir_model, options)[:2]
    return FoldResult(to_proto(folded), records)


def _is_graphsurgeon_graph(model) -> bool:
    return type(model).__module__.startswith("onnx_graphsurgeon") and type(model).__name__ == "Graph"


def _fold_graphsurgeon(graph, options: _PassOptions) -> FoldResult:
    """onnx-graphsurgeon interop (extra `graphsurgeon`): a gs.Graph in, a gs.Graph back."""
    import onnx_graphsurgeon as gs

    folded = fold(gs.export_onnx(graph), standalone=options.standalone, bn_only=options.bn_only)
    return FoldResult(gs.import_onnx(folded.model), folded.records)


@dataclass(frozen=True)
class _PassOptions:
    standalone: str = "bn"
    bn_only: bool = False
    refused: Mapping[str, str] = field(default_factory=dict)  # Cast sandwiches a check refused: key -> reason


class _PassOutcome(NamedTuple):
    model: ir.Model
    records: list[NodeRecord]
    sites: list[Site]
    sandwiches: dict[str, list[str]]  # site name -> the Cast sandwich folds (keys) it shows


def _run_pass(model: ir.Model, options: _PassOptions, progress=None) -> _PassOutcome:
    from bnfold.fold_pass import BatchNormFoldPass

    fold_pass = BatchNormFoldPass(standalone=options.standalone, progress=progress, bn_only=options.bn_only,
                                  refused=options.refused)
    result = fold_pass(model)
    return _PassOutcome(result.model, fold_pass.records, fold_pass.sites, fold_pass.sandwiches)


ProgressCallback = Callable[[str, int, int], None]


def fold_file(src: str | os.PathLike, dst: str | os.PathLike | None, *, check: bool = True,
              standalone: str = "bn", bn_only: bool = False, external_data: str = "auto", dry_run: bool = False,
              inputs: Mapping[str, np.ndarray] | None = None,
              shapes: Mapping[str, tuple[int, ...]] | None = None,
              rtol: float | None = None, atol: float | None = None, strict: bool = False,
              report: str | os.PathLike | None = None, progress: ProgressCallback | None = None) -> FoldReport:
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
    result = FoldReport(model=os.fspath(src))
    started = time.perf_counter()
    report_path = None if report is None else Path(report)
    try:
        job = _FileJob(Path(src), None if dst is None else Path(dst), check and not dry_run, dry_run,
                       _PassOptions(standalone, bn_only), external_data,
                       _CheckRequest(Tolerance(rtol, atol), inputs or {}, shapes or {}, strict), progress, report_path)
        job.run(result)
    except BnfoldError as error:
        result.error, result.exit_code = first_line(error, 500), error.exit_code
        result.seconds = time.perf_counter() - started
        _write_failure_report(report_path, result, Path(src), None if dst is None else Path(dst))
        raise
    result.seconds = time.perf_counter() - started
    _write_report(report, result)
    return result


@dataclass(frozen=True)
class _CheckRequest:
    tolerance: Tolerance
    inputs: Mapping[str, np.ndarray]
    shapes: Mapping[str, tuple[int, ...]]
    strict: bool


@dataclass
class _FileJob:
    """One fold_file run: load, fold, write staged, check, commit (folding again without refused sandwiches)."""

    source: Path
    destination: Path | None
    check: bool
    dry_run: bool
    options: _PassOptions
    external_data: str
    checks: _CheckRequest
    progress: ProgressCallback | None
    report: Path | None = None
    outcome: _PassOutcome | None = None  # the current fold; dropped once written (one model in memory)

    def step(self, name: str) -> None:
        if self.progress is not None:
            self.progress(name, 0, 1)

    def run(self, result: FoldReport) -> None:
        from bnfold.fold_pass import check_standalone

        check_standalone(self.options.standalone)
        self._check_paths()
        self.step("loading")
        proto = load_proto(self.source, by_reference=True)
        if self.check:
            from bnfold.draws import check_user_inputs, input_specs

            check_user_inputs(input_specs(proto), self.checks.inputs, self.checks.shapes)
        model, token, threshold, input_files = self._open(proto)
        if self.dry_run:
            from bnfold.explain import diagnose

            result.diagnostics = diagnose(model)
        self._fold(model, result, proto)
        del model
        if self.dry_run:
            return
        before = sum(_file_size(path) for path in input_files)
        while (written := self._write_checked(result, proto, token, threshold)) is None:
            logger.info("folding again without the Cast sandwich fold(s) the check refused")
            model = self._open(proto)[0]
            self._fold(model, result, proto)
            del model
        result.output, result.size = os.fspath(self.destination), (before, written)

    def _fold(self, model: ir.Model, result: FoldReport, proto: onnx.ModelProto) -> None:
        self.outcome = _run_pass(model, self.options, self.progress)
        result.records, result.unchanged = self.outcome.records, not self.outcome.sites
        result.ops = _op_counts(proto, self.outcome.model)

    def _check_paths(self) -> None:
        if self.report is not None:
            check_report_path(self.report)
        if self.dry_run:
            return
        if self.destination is None:
            raise InputError("an output path is needed (or use dry_run)")
        check_output_path(self.destination)

    def _open(self, proto: onnx.ModelProto):
        """The model to fold (small external tensors read), its data token, external threshold and input files."""
        from bnfold.model_io import (
            external_data_files,
            external_data_threshold,
            load_model,
            model_file_bytes,
            read_small_external_tensors,
        )

        model = load_model(self.source, proto)
        input_files = [self.source, *external_data_files(model, self.source)]
        threshold = external_data_threshold(model, self.external_data,
                                            model_file_bytes(self.source, set(input_files[1:])), self.source)
        token = data_token(input_files, __version__, self.options.standalone, str(self.options.bn_only),
                           str(threshold))
        if not self.dry_run:
            data_name = None if threshold is None else data_file_name(self.destination, token)
            refuse_clobbering(input_files, self.destination, data_name, self.report)
        elif self.report is not None:
            refuse_clobbering(input_files, self.report, None)
        read_small_external_tensors(model)
        return model, token, threshold, input_files

    def _write_checked(self, result: FoldReport, proto: onnx.ModelProto, token: str,
                       threshold: int | None) -> int | None:
        """Write staged, check, commit: the bytes written; None when Cast sandwich folds must be refused first."""
        from bnfold.output import write_model

        checker = _checker(self.outcome, self.checks if self.check else None, proto, self.source)
        sandwiches = {} if self.options.refused else self.outcome.sandwiches  # a second run commits or fails
        with Stage(self.destination, token) as stage:
            self.step("writing")
            write_model(self.outcome.model, stage.model, stage.data, threshold)
            self.outcome = None  # its memory-mapped weights go before onnxruntime loads a model
            written = sum(_file_size(path) for path in (stage.model, stage.data))
            if checker is not None:
                self.step("checking")
            refusals = _check_staged(checker, stage, result, sandwiches, self.checks.strict)
            if refusals:
                self.options = dataclasses.replace(self.options, refused=refusals)
                return None
            stage.commit()
        return written


def _op_counts(proto: onnx.ModelProto, folded: ir.Model) -> dict[str, tuple[int, int]]:
    """Op type -> (nodes before, nodes after) in the main graph."""
    from collections import Counter

    before = Counter(node.op_type for node in proto.graph.node)
    after = Counter(node.op_type for node in folded.graph)
    return {op: (before[op], after[op]) for op in sorted(set(before) | set(after))}


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _checker(outcome: _PassOutcome, checks: _CheckRequest | None, proto: onnx.ModelProto, source: Path):
    """The check of this fold, or None (not asked for, or nothing changed)."""
    if checks is None or not outcome.sites:
        return None
    from bnfold.equivalence import Check, Source

    return Check(Source(proto, source.resolve().parent), outcome.sites, checks.tolerance, checks.inputs,
                 checks.shapes, seed=0)


def _check_staged(checker, stage: Stage, result: FoldReport, sandwiches: Mapping[str, list[str]],
                  strict: bool) -> dict[str, str]:
    """Check the staged model: the Cast sandwich folds to refuse when they alone failed it, else {} (passed, or
    raises CheckFailedError)."""
    if checker is None:
        return {}
    from bnfold.equivalence import Source

    checker.original()
    result.check = checker.folded(Source(load_proto(stage.model, by_reference=True), stage.path))
    refusals = _sandwich_refusals(result.check, sandwiches)
    if not refusals:
        _judge(result, strict)
    return refusals


def _sandwich_refusals(check: CheckResult, sandwiches: Mapping[str, list[str]]) -> dict[str, str]:
    """The Cast sandwich folds to undo when they alone explain a failed check (key -> reason); else {}.

    Each failing site must show such a fold; when only graph outputs fail, every such fold is undone.
    """
    if not check.failed or not sandwiches:
        return {}
    failing = [site for site in check.sites if not site.passed]
    if any(site.name not in sandwiches for site in failing):
        return {}
    blamed = {key: site for site in failing for key in sandwiches[site.name]}
    if not failing:
        first = next(output for output in check.outputs if not output.passed)
        blamed = {key: first for keys in sandwiches.values() for key in keys}
    return {key: f"folding it across its Casts fails the check at '{where.name}' (max abs err "
                 f"{where.max_abs_err:.3e}, allowed {where.tolerance:.3e}); left as it was"
            for key, where in blamed.items()}


def _write_report(path: str | os.PathLike | None, result: FoldReport) -> None:
    if path is not None:
        write_atomically(Path(path), result.to_json() + "\n")


def _write_failure_report(report: Path | None, result: FoldReport, source: Path, destination: Path | None) -> None:
    """The report of a run that failed, naming the failure: written unless writing it could lose a file (the
    report path is one of the models, or an existing file that is not a JSON report) or is itself the failure."""
    if report is None or any(path is not None and same_file(report, path) for path in (source, destination)):
        return
    try:
        check_report_path(report)
        if report.exists() and report.read_bytes()[:1] not in (b"{", b""):
            return
        _write_report(report, result)
    except (BnfoldError, OSError) as error:
        logger.info("no report written: %s", error)


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
