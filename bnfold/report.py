"""Per-BN records, the check result, and their JSON and text renderings."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
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
    # "backward", "concat", "forward"; "collapsed" (merged into one BN), "scale-forward" (became an Add,
    # its scale folded forward), "mul-add" (became Mul+Add)
    pattern: str | None = None
    op: str = "BatchNormalization"


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs_err: float
    max_rel_err: float
    tolerance: float  # the allowed max_abs_err: atol + rtol·max|reference|
    passed: bool
    note: str | None = None  # e.g. "NaN positions differ", "shape (2, 3) vs (2, 4)"


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    outputs: list[OutputCheck] = field(default_factory=list)
    inputs: dict[str, list[int]] = field(default_factory=dict)  # shapes fed to both models

    def worst(self) -> OutputCheck | None:
        failing = [o for o in self.outputs if not o.passed]
        pool = failing or self.outputs
        return max(pool, key=lambda o: o.max_rel_err, default=None)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "outputs": [asdict(o) for o in self.outputs], "inputs": self.inputs}


@dataclass
class FoldReport:
    records: list[BnRecord] = field(default_factory=list)
    check: CheckResult | None = None
    model: str | None = None
    diagnostics: dict | None = None  # BN name -> explain.Diagnosis (dry runs)

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
        lines.extend(_check_lines(self.check))
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
    return f"into {op}"


def _check_lines(check: CheckResult | None) -> list[str]:
    if check is None:
        return ["check: not run"]
    worst = check.worst()
    if check.passed:
        detail = "" if worst is None else f", max rel err {worst.max_rel_err:.2e} ({worst.name})"
        return [f"check: passed ({len(check.outputs)} outputs{detail})"]
    lines = ["check: FAILED"]
    for output in check.outputs:
        if not output.passed:
            note = f" ({output.note})" if output.note else ""
            lines.append(f"  output {output.name}: max abs err {output.max_abs_err:.3e}, "
                         f"max rel err {output.max_rel_err:.3e}, allowed {output.tolerance:.3e}{note}")
    return lines
