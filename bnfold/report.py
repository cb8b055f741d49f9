"""Per-BN records, the check result, and their JSON and text renderings."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

Action = Literal["folded", "converted", "skipped"]


@dataclass(frozen=True)
class BnRecord:
    """What happened to one BatchNormalization node."""

    name: str
    action: Action
    into: str | None = None  # e.g. "Conv conv1", "Mul+Add"
    reason: str | None = None  # why it was not folded (for converted and skipped)
    graph: str = "main"  # the graph or function it lives in


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

    def counts(self) -> Counter:
        return Counter(record.action for record in self.records)

    def to_dict(self) -> dict:
        counts = self.counts()
        return {
            "model": self.model,
            "summary": {action: counts.get(action, 0) for action in ("folded", "converted", "skipped")},
            "nodes": [asdict(record) for record in self.records],
            "check": None if self.check is None else self.check.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)

    def summary_lines(self) -> list[str]:
        """A short human summary: counts by target, every skip with its reason, the check."""
        counts = self.counts()
        folded_into = Counter((r.into or "").split(" ")[0] for r in self.records if r.action == "folded")
        targets = ", ".join(f"{n} into {op}" for op, n in sorted(folded_into.items()))
        head = (f"{len(self.records)} BatchNormalization: {counts.get('folded', 0)} folded"
                + (f" ({targets})" if targets else "")
                + f", {counts.get('converted', 0)} converted to Mul+Add, {counts.get('skipped', 0)} skipped")
        lines = [head]
        for record in self.records:
            if record.action != "folded":
                lines.append(f"  {record.action} {record.name}: {record.reason}")
        lines.extend(_check_lines(self.check))
        return lines


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
