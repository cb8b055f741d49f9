"""The check of `bnfold.fold()`: a model in memory folded, checked, and folded again without failing folds.

    run_pass → Check(original).folded(folded) → failing sites' folds refused → run_pass again …

The same check as fold_file's (equivalence.py), on the models in memory rather than
on a staged file. A model onnxruntime cannot run is returned unchecked, with a note.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from bnfold.check.comparison import Tolerance
from bnfold.errors import RuntimeUnavailableError, first_line
from bnfold.folding.options import PassOptions, refused_nodes, sandwiches_refused
from bnfold.report import CheckResult, FoldReport

if TYPE_CHECKING:
    from bnfold.folding.fold_pass import FoldOutcome
    from bnfold.model_io.model_file import ModelFile

logger = logging.getLogger(__name__)


@dataclass
class Checked:
    outcome: FoldOutcome
    result: CheckResult | None
    note: str | None = None
    backed_out: list[str] = field(default_factory=list)


def check_in_memory(
    source: ModelFile,
    outcome: FoldOutcome,
    options: PassOptions,
    tolerance: Tolerance,
    inputs: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    strict: bool,
) -> Checked:
    """Check `outcome` against `source`; back out failing folds (unless `strict`) until it passes."""
    from bnfold.check.equivalence import Check
    from bnfold.check.models import source_of
    from bnfold.folding.fold_pass import run_pass
    from bnfold.runs.file_run import refusals_or_judge

    original = source_of(source.structure if source.proto is not None else source.load(), source.base_dir, "model")
    backed_out: list[str] = []
    while True:
        check = Check(original, outcome.sites, tolerance, inputs, shapes, seed=0)
        try:
            check.original()
        except RuntimeUnavailableError as error:
            return Checked(outcome, None, f"not checked: {first_line(error)}", backed_out)
        result = check.folded(source_of(outcome.model, source.base_dir, "folded"))
        sandwiches = {} if sandwiches_refused(options.refused) else outcome.sandwiches
        report = FoldReport(records=outcome.records, check=result)
        refusals = refusals_or_judge(report, check.sites, sandwiches, strict, options.refused)
        if not refusals:
            return Checked(outcome, result, None, backed_out)
        logger.info("folding again without %d fold(s) that failed the check", len(refusals))
        backed_out += refused_nodes(refusals)
        options = dataclasses.replace(options, refused={**options.refused, **refusals})
        outcome = run_pass(source.load(), options)
