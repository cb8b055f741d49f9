"""Per-BN records and the check result, and their JSON (their words come from words.py)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from bnfold import words
from bnfold.words import ACTIONS

Action = Literal["folded", "kept", "converted", "skipped"]


@dataclass(frozen=True)
class NodeRecord:
    """What happened to one node: a BatchNormalization, or a per-channel Mul/Add/Sub/Div (`op` says which)."""

    name: str
    action: Action
    into: str | None = None  # e.g. "Conv 'conv1'", "Conv 'a'[0:64], Conv 'b'[64:128]", "BatchNormalization", "Mul+Add"
    reason: str | None = None  # why it was not folded (kept, converted, skipped)
    graph: str = "main"  # the graph or function it lives in
    # "backward", "concat", "forward"; "cast-sandwich" (backward across Casts into half-precision weights);
    # "reparameterized" (an identity branch merged into a Conv); "collapsed" (merged into one BN),
    # "scale-forward" (became an Add, its scale folded forward), "mul-add" (became Mul+Add)
    pattern: str | None = None
    op: str = "BatchNormalization"
    site: str | None = None  # the value the check compares for it (its output, now computed by the fold)


BnRecord = NodeRecord  # its name before it also recorded Mul/Add/Sub/Div nodes


@dataclass(frozen=True)
class Site:
    """A value of the main graph whose computation a fold changed: the check compares it in both models.

    A fold inside an If/Loop/Scan body or a function is seen through the outputs of the
    main-graph node that holds it. `branch` is (the If's condition, the value that selects
    the changed branch) when only one branch of an If changed: a draw that takes the
    other branch does not exercise the site.
    """

    name: str
    bn: str | None = None
    branch: tuple[str, bool] | None = None
    nodes: tuple[str, ...] = ()  # the nodes whose folds changed it (the pass knows them; `bn` names them)


@dataclass(frozen=True)
class OutputCheck:
    """One compared value: a graph output, or a site (a value whose computation a fold changed)."""

    name: str
    max_abs_err: float
    max_rel_err: float  # in the worst channel, relative to that channel's largest value
    tolerance: float  # the allowed max_abs_err in the worst channel: atol + rtol·max|reference| there
    passed: bool
    note: str | None = None  # e.g. "NaN/Inf positions differ", "shape (2, 3) instead of (2, 4)"
    channel: int | None = None  # the worst channel (axis 1), when there is more than one
    informative: bool = True  # it held evidence: not all NaN/Inf, not the same for every input draw
    bn: str | None = None  # for a site: the BatchNormalizations whose folds changed it
    exercised: bool = True  # False for a site the inputs never reached (an If branch not taken)
    value_rel_err: float = 0.0  # max_abs_err relative to the largest |value| of the whole value
    # the original's own rounding noise in the worst channel (check/comparison.py), when it was measured
    noise: float | None = None
    # the smallest --atol that would have passed it (0 when it passed as it is)
    needed_atol: float | None = None

    def with_context(self, **changes) -> OutputCheck:
        return replace(self, **changes)

    def measured(self) -> str:
        """What the comparison measured: the error, what was allowed, the noise it was judged against."""
        return words.measured(self.max_abs_err, self.tolerance, self.noise, self.needed_atol)


Verdict = Literal["passed", "failed", "inconclusive"]


@dataclass(frozen=True)
class CheckResult:
    """The equivalence check: `verdict`, every graph output and every site compared, the input shapes fed.

    passed: every comparison passed and at least one site a fold touched held evidence;
    inconclusive: nothing failed, but no touched site held evidence (all NaN/Inf,
    constant, or never reached); failed: a comparison failed.
    """

    verdict: Verdict
    outputs: list[OutputCheck] = field(default_factory=list)
    sites: list[OutputCheck] = field(default_factory=list)
    inputs: dict[str, list[int]] = field(default_factory=dict)  # shapes fed to both models
    note: str | None = None  # e.g. "both models run converted to float32"

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    @property
    def failed(self) -> bool:
        return self.verdict == "failed"

    def first_failure(self) -> OutputCheck | None:
        """The first site (in graph order) that failed, else the first failed output."""
        return next((c for c in [*self.sites, *self.outputs] if not c.passed), None)

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "passed": self.passed,
            "outputs": [asdict(o) for o in self.outputs],
            "sites": [asdict(s) for s in self.sites],
            "inputs": self.inputs,
            "note": self.note,
        }

    def largest_errors(self) -> tuple[OutputCheck | None, OutputCheck | None]:
        """The compared values with the largest error against their whole value, and against one channel."""
        compared = [*self.outputs, *self.sites]
        return (
            max(compared, key=lambda c: c.value_rel_err, default=None),
            max(compared, key=lambda c: c.max_rel_err, default=None),
        )

    def __repr__(self) -> str:
        value, _ = self.largest_errors()
        error = "" if value is None else f", max rel err {value.value_rel_err:.1e}"
        return f"CheckResult({self.verdict}: {len(self.outputs)} outputs, {len(self.sites)} sites{error})"

    __str__ = __repr__


@dataclass
class FoldReport:
    """Everything one run found and did: a record per BN (and per Mul/Add/Sub/Div folded), the check,
    op counts and file sizes before → after, the time it took, and the error that stopped it, if any."""

    records: list[NodeRecord] = field(default_factory=list)
    check: CheckResult | None = None
    model: str | None = None
    diagnostics: dict | None = None  # BN name -> explain.Diagnosis (dry runs)
    unchanged: bool = False  # nothing was folded: written as it was, with no check needed
    output: str | None = None  # where the folded model was written (None: not written)
    ops: dict[str, tuple[int, int]] = field(default_factory=dict)  # op type -> (before, after), main graph
    size: tuple[int, int] | None = None  # bytes of the model and its data files, before -> after
    seconds: float | None = None  # wall time of the run, in the library
    error: str | None = None  # why the run stopped (then nothing was written)
    exit_code: int = 0
    backed_out: list[str] = field(default_factory=list)  # folds undone because they failed the check

    def counts(self) -> Counter:
        """Actions of the BatchNormalization records."""
        return Counter(record.action for record in self.batch_norms())

    def batch_norms(self) -> list[NodeRecord]:
        return [record for record in self.records if record.op == "BatchNormalization"]

    def others_folded(self) -> Counter:
        """Mul/Add/Sub/Div folded besides the BNs, by op type."""
        return Counter(
            record.op for record in self.records if record.op != "BatchNormalization" and record.action == "folded"
        )

    def to_dict(self) -> dict:
        counts = self.counts()
        return {
            "model": self.model,
            "output": self.output,
            "summary": {action: counts.get(action, 0) for action in ACTIONS},
            "nodes": [asdict(record) for record in self.records],
            "check": None if self.check is None else self.check.to_dict(),
            "unchanged": self.unchanged,
            "ops": {op: list(counts) for op, counts in self.ops.items()},
            "size": None if self.size is None else {"before": self.size[0], "after": self.size[1]},
            "seconds": self.seconds,
            "error": self.error,
            "exit_code": self.exit_code,
            "backed_out": self.backed_out,
            **(
                {}
                if self.diagnostics is None
                else {"diagnostics": {name: d.to_dict() for name, d in self.diagnostics.items()}}
            ),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)

    def __repr__(self) -> str:
        check = "" if self.check is None else f"; check {self.check.verdict}"
        error = "" if self.error is None else f"; error: {self.error}"
        return f"FoldReport({self.model!r}: {words.totals(len(self.batch_norms()), self.counts())}{check}{error})"

    __str__ = __repr__
