"""One `fold_file` run, top to bottom: open → fold → save (staged) → check → commit.

    ModelFile.open(src)          validated; nothing read from data files
    .load(external_data)         the model to fold; the output layout decided
    run_pass(model, options)     the folded model, its records and the check's sites
    ModelFile.save(model, stage) written into a staging folder beside the output
    Check.original / .folded    both models on onnxruntime, every site and output
    Stage.commit()               renamed into place (data file first), under a folder lock

When the check fails only where Cast sandwich folds are (folding/cast_sandwiches.py), the run folds
again without them (each refused with the reason) and checks again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from bnfold import __version__, words
from bnfold.check.comparison import Tolerance
from bnfold.errors import BnfoldError, CheckFailedError, InputError
from bnfold.folding.options import PassOptions, refusal_key, refused_nodes, sandwiches_refused
from bnfold.model_io.copy_through import op_counts
from bnfold.model_io.model_file import ModelFile
from bnfold.model_io.safe_files import same_file, write_atomically
from bnfold.model_io.staging import Stage, check_output_path, check_report_path, data_token, refuse_clobbering
from bnfold.report import CheckResult, FoldReport, Site

if TYPE_CHECKING:  # onnx-ir and the pass load only when there is something to fold
    import onnx_ir as ir

    from bnfold.folding.fold_pass import FoldOutcome

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckRequest:
    tolerance: Tolerance
    inputs: Mapping[str, np.ndarray]
    shapes: Mapping[str, tuple[int, ...]]
    strict: bool


@dataclass
class FileRun:
    """One fold_file run; `run(result)` fills the report."""

    source: Path
    destination: Path | None
    check: bool
    dry_run: bool
    options: PassOptions
    external_data: str
    checks: CheckRequest
    progress: Callable[[str, int, int], None] | None
    report: Path | None = None
    outcome: FoldOutcome | None = None  # the current fold; dropped once written (one model in memory)

    def run(self, result: FoldReport) -> None:
        self._check_paths()
        self._step("loading")
        source = ModelFile.open(self.source)
        if self.check:
            from bnfold.check.inputs import check_user_inputs, input_specs

            check_user_inputs(input_specs(source.structure), self.checks.inputs, self.checks.shapes)
        if source.copyable(self.external_data) and not source.may_fold():
            self._copy_through(result, source)  # nothing to fold: onnx-ir is not even imported
            return
        model = source.load(self.external_data)
        token = source.token(__version__, self.options.standalone, str(self.options.bn_only))
        self._refuse_clobbering(
            source.files, source.data_name(self._destination(), token) if not self.dry_run else None
        )
        if self.dry_run:
            from bnfold.folding.diagnosis import diagnose

            result.diagnostics = diagnose(model)
        self._fold(model, result, source)
        del model
        if self.dry_run:
            return
        if result.unchanged and source.copyable(self.external_data):
            self.outcome = None  # the pass kept every BN as it was: the same bytes, not a re-serialization
            self._copy_through(result, source)
            return
        destination = self._destination()
        before = source.size()
        while (written := self._save_checked(result, source, destination, token)) is None:
            logger.info("folding again without the fold(s) the check refused")
            self._fold(source.load(self.external_data), result, source)
        result.output, result.size = os.fspath(destination), (before, written)

    def _copy_through(self, result: FoldReport, source: ModelFile) -> None:
        logger.info("%s: nothing to fold; copied through", self.source)
        result.ops, result.unchanged = op_counts(source.structure), True
        if self.dry_run:
            result.diagnostics = {}
            self._refuse_clobbering([self.source], None)
            return
        token = data_token([self.source], __version__, self.options.standalone, str(self.options.bn_only), "None")
        self._refuse_clobbering([self.source], None)
        size = source.copy_through(self._destination(), token)
        result.output, result.size = os.fspath(self._destination()), (size, size)

    def _step(self, name: str) -> None:
        if self.progress is not None:
            self.progress(name, 0, 1)

    def _check_paths(self) -> None:
        if self.report is not None:
            check_report_path(self.report)
        if not self.dry_run:
            check_output_path(self._destination())

    def _destination(self) -> Path:
        if self.destination is None:
            raise InputError("an output path is needed (or use dry_run)")
        return self.destination

    def _refuse_clobbering(self, files: list[Path], data_name: str | None) -> None:
        if not self.dry_run:
            refuse_clobbering(files, self._destination(), data_name, self.report)
        elif self.report is not None:
            refuse_clobbering(files, self.report, None)

    def _fold(self, model: ir.Model, result: FoldReport, source: ModelFile) -> None:
        from bnfold.folding.fold_pass import run_pass

        self.outcome = run_pass(model, self.options, self.progress)
        result.records, result.unchanged = self.outcome.records, not self.outcome.sites
        result.ops = _op_counts(source.structure, self.outcome.model)

    def _save_checked(self, result: FoldReport, source: ModelFile, destination: Path, token: str) -> int | None:
        """Save staged, check, commit: the bytes written; None when Cast sandwich folds must be refused first."""
        outcome, self.outcome = self.outcome, None
        if outcome is None:
            raise AssertionError("nothing was folded")
        result.check = None  # a check of an earlier round (whose failing folds are now refused) says nothing
        checker = _checker(outcome, self.checks if self.check else None, source)
        sandwiches = {} if sandwiches_refused(self.options.refused) else outcome.sandwiches
        with Stage(destination, token) as stage:
            self._step("writing")
            written = source.save(outcome.model, stage)
            source.release(outcome.model)  # its memory-mapped weights go before onnxruntime loads a model
            del outcome
            if checker is not None:
                self._step("checking")
            refusals = _check_staged(checker, stage, result, sandwiches, self.checks.strict, self.options.refused)
            if refusals:
                self.options = dataclasses.replace(self.options, refused={**self.options.refused, **refusals})
                result.backed_out += refused_nodes(refusals)
                return None
            stage.commit()
        return written


def _op_counts(proto: onnx.ModelProto, folded: ir.Model) -> dict[str, tuple[int, int]]:
    """Op type -> (nodes before, nodes after) in the main graph."""
    from collections import Counter

    before = Counter(node.op_type for node in proto.graph.node)
    after = Counter(node.op_type for node in folded.graph)
    return {op: (before[op], after[op]) for op in sorted(set(before) | set(after))}


def _checker(outcome: FoldOutcome, checks: CheckRequest | None, source: ModelFile):
    """The check of this fold, or None (not asked for, or nothing changed)."""
    if checks is None or not outcome.sites:
        return None
    from bnfold.check.equivalence import Check
    from bnfold.check.models import Source

    return Check(
        Source(source.structure, source.base_dir), outcome.sites, checks.tolerance, checks.inputs, checks.shapes, seed=0
    )


def _check_staged(
    checker,
    stage: Stage,
    result: FoldReport,
    sandwiches: Mapping[str, list[str]],
    strict: bool,
    already: Mapping[str, str],
) -> dict[str, str]:
    """Check the staged model: the folds to refuse (the Cast sandwich folds when they alone failed it, else,
    unless `strict`, the folds feeding the failing sites), or {} (passed, or raises CheckFailedError)."""
    if checker is None:
        return {}
    from bnfold.check.models import Source

    checker.original()
    staged = ModelFile.open(stage.model)
    result.check = checker.folded(Source(staged.structure, staged.base_dir))
    return refusals_or_judge(result, checker.sites, sandwiches, strict, already)


def refusals_or_judge(
    result: FoldReport, sites: list[Site], sandwiches: Mapping[str, list[str]], strict: bool, already: Mapping[str, str]
) -> dict[str, str]:
    """The folds to refuse after `result.check`: the Cast sandwich folds when they alone failed it, else (unless
    `strict`) the folds feeding the failing sites; {} when it passed (or raises CheckFailedError)."""
    if result.check is None:
        return {}
    refusals = _sandwich_refusals(result.check, sandwiches)
    if not refusals and not strict:
        refusals = failing_folds(result.check, sites, already)
    if not refusals:
        judge(result, strict)
    return refusals


def failing_folds(check: CheckResult, sites: list[Site], already: Mapping[str, str]) -> dict[str, str]:
    """The folds that feed a failing site and have not been refused yet (refusal key -> reason); {} when the
    failure cannot be pinned on such a fold (only graph outputs fail, or every fold there is refused already)."""
    owners = {site.name: site.nodes for site in sites}
    refusals: dict[str, str] = {}
    for failing in (site for site in check.sites if not site.passed):
        for node in owners.get(failing.name, ()):
            key = refusal_key(node)
            if key not in already:
                refusals.setdefault(key, words.fails_the_check(failing.name, failing.measured()))
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
    return {
        key: words.sandwich_fails_the_check(where.name, where.max_abs_err, where.tolerance)
        for key, where in blamed.items()
    }


def write_report(path: str | os.PathLike | None, result: FoldReport) -> None:
    if path is not None:
        write_atomically(Path(path), result.to_json() + "\n")


def write_failure_report(report: Path | None, text: str, protected: Iterable[Path | None]) -> None:
    """The report of a run that failed, naming the failure: written unless writing it could lose a file (the
    report path is one of the `protected` model paths, or an existing file that is not a JSON report) or is
    itself the failure."""
    if report is None or any(path is not None and same_file(report, path) for path in protected):
        return
    try:
        check_report_path(report)
        if report.exists() and report.read_bytes()[:1] not in (b"{", b""):
            return
        write_atomically(report, text + "\n")
    except (BnfoldError, OSError) as error:
        logger.info("no report written: %s", error)


def judge(report: FoldReport, strict: bool) -> None:
    """Raise CheckFailedError for a failed check (or, with `strict`, an inconclusive one)."""
    check = report.check
    if check is None:
        return
    failure = check.first_failure()
    if check.failed and failure is not None:
        kind = "site" if failure in check.sites else "output"
        message = words.check_failed(
            failure.bn, kind, failure.name, failure.channel, failure.max_abs_err, failure.max_rel_err
        )
        raise CheckFailedError(message, report)
    if check.verdict == "inconclusive" and strict:
        raise CheckFailedError(words.CHECK_INCONCLUSIVE_STRICT, report)
