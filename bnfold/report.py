"""Per-BN records, the check result, and their JSON and text renderings."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

Action = Literal["folded", "kept", "converted", "skipped"]
ACTIONS: tuple[Action, ...] = ("folded", "kept", "converted", "skipped")


@dataclass(frozen=True)
class BnRecord:
    """What happened to one BatchNormalization node (or a Mul/Add/Sub/Div folded along with one)."""

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

    def with_context(self, **changes) -> OutputCheck:
        return replace(self, **changes)


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

    def worst(self) -> OutputCheck | None:
        failing = [o for o in self.outputs if not o.passed]
        pool = failing or self.outputs
        return max(pool, key=lambda o: o.max_rel_err, default=None)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "passed": self.passed, "outputs": [asdict(o) for o in self.outputs],
                "sites": [asdict(s) for s in self.sites], "inputs": self.inputs, "note": self.note}


@dataclass
class FoldReport:
    records: list[BnRecord] = field(default_factory=list)
    check: CheckResult | None = None
    model: str | None = None
    diagnostics: dict | None = None  # BN name -> explain.Diagnosis (dry runs)
    unchanged: bool = False  # nothing was folded: written as it was, with no check needed

    def counts(self) -> Counter:
        """Actions of the BatchNormalization records."""
        return Counter(record.action for record in self.batch_norms())

    def batch_norms(self) -> list[BnRecord]:
        return [record for record in self.records if record.op == "BatchNormalization"]

    def to_dict(self) -> dict:
        counts = self.counts()
        return {
            "model": self.model,
            "summary": {action: counts.get(action, 0) for action in ACTIONS},
            "nodes": [asdict(record) for record in self.records],
            "check": None if self.check is None else self.check.to_dict(),
            "unchanged": self.unchanged,
            **({} if self.diagnostics is None else {
                "diagnostics": {name: d.to_dict() for name, d in self.diagnostics.items()}}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)

    def summary_lines(self) -> list[str]:
        """A short human summary: counts by target, every skip with its reason, the check."""
        counts = self.counts()
        bns = self.batch_norms()
        folded_into = Counter(_target_kind(r) for r in bns if r.action == "folded")
        targets = ", ".join(f"{n} {kind}" for kind, n in sorted(folded_into.items()))
        lines = [_totals(len(bns), counts, targets)]
        others = [r for r in self.records if r.op != "BatchNormalization"]
        if others:
            kinds = Counter(r.op for r in others)
            lines.append("  also folded: " + ", ".join(f"{n} {op}" for op, n in sorted(kinds.items())))
        for record in bns:
            if record.action in ("kept", "converted"):
                lines.append(f"  {record.action} {record.name} as {record.into}: {record.reason}")
            elif record.action == "skipped":
                lines.append(f"  skipped {record.name}: {record.reason}")
        lines.extend(_check_lines(self.check, self.unchanged))
        return lines


    def plan_lines(self) -> list[str]:
        """The dry-run plan: a table of every BN (and chain op), then the model's diagnostics."""
        lines = [f"plan for {self.model}: nothing written", "",
                 "| node | op | action | pattern | into | reason |", "|---|---|---|---|---|---|"]
        for r in self.records:
            lines.append(f"| {r.name} | {r.op} | {r.action} | {r.pattern or ''} | {r.into or ''} | {r.reason or ''} |")
        counts = self.counts()
        lines += ["", _totals(len(self.batch_norms()), counts) + " (planned; nothing written)"]
        if self.diagnostics is not None:
            lines.append(_diagnostics_line(self.diagnostics))
        return lines


def _totals(count: int, counts: Counter, targets: str = "") -> str:
    """'8 BatchNormalization: 6 folded (…), 1 kept, 1 converted, 0 skipped'."""
    folded = f"{counts.get('folded', 0)} folded" + (f" ({targets})" if targets else "")
    rest = ", ".join(f"{counts.get(action, 0)} {action}" for action in ACTIONS[1:])
    return f"{count} BatchNormalization: {folded}, {rest}"


def _diagnostics_line(diagnostics: dict) -> str:
    def channels(attribute: str) -> int:
        return sum(len(getattr(d, attribute)) for d in diagnostics.values())

    training = sum(d.training is not None for d in diagnostics.values())
    return (f"diagnostics: ε dominates σ² in {channels('epsilon_dominates')} channels, "
            f"{channels('dead')} dead channels (γ ≈ 0), {channels('fp16_overflow')} channels at fp16 overflow "
            f"risk after folding, {training} BN in training mode (bnfold IN --explain NODE for one BN)")


def _target_kind(record: BnRecord) -> str:
    """'into Conv', 'forward into Gemm', 'into producers behind a Concat', 'as Mul+Add, both folded'."""
    op = (record.into or "").split(" ")[0]
    if record.pattern == "forward":
        return f"forward into {op}"
    if record.pattern == "concat":
        return "into producers behind a Concat"
    if record.pattern in ("mul-add", "scale-forward"):
        return "as Mul+Add, both folded"
    if record.pattern == "collapsed":
        return "into a neighbouring BN"
    if record.pattern == "reparameterized":
        return "into a Conv of its branches"
    return f"into {op}"


def _check_lines(check: CheckResult | None, unchanged: bool = False) -> list[str]:
    if check is None:
        return ["check: not needed (nothing was changed)" if unchanged else "check: not run"]
    counted = f"{len(check.outputs)} outputs, {len(check.sites)} sites"
    if check.passed:
        compared = [*check.outputs, *check.sites]
        value = max(compared, key=lambda c: c.value_rel_err, default=None)
        channel = max(compared, key=lambda c: c.max_rel_err, default=None)
        detail = "" if value is None else (f"; max rel err {value.value_rel_err:.2e} ({value.name}), "
                                           f"{channel.max_rel_err:.2e} of one channel's own values ({channel.name})")
        return [f"check: passed ({counted}{detail})"]
    if check.verdict == "inconclusive":
        unreached = [c.name for c in check.sites if not c.exercised]
        reason = "no value a fold changed held evidence: each was all NaN/Inf or the same for every input draw"
        if unreached:
            reason += f"; never reached: {', '.join(unreached[:5])}"
        return [f"check: INCONCLUSIVE ({counted}): {reason} (written; --strict refuses)"]
    lines = [f"check: FAILED ({counted})"]
    for kind, values in (("site", check.sites), ("output", check.outputs)):
        for value in values:
            if not value.passed:
                lines.append("  " + _failure_line(kind, value))
    return lines


def _failure_line(kind: str, value: OutputCheck) -> str:
    where = f" (BatchNormalization {value.bn})" if value.bn else ""
    channel = f" channel {value.channel}" if value.channel is not None else ""
    note = f" ({value.note})" if value.note else ""
    return (f"{kind} {value.name}{where}{channel}: max abs err {value.max_abs_err:.3e}, max rel err "
            f"{value.max_rel_err:.3e}, allowed {value.tolerance:.3e}{note}")
