"""What bnfold prints for people: the fold summary, the dry-run plan, the batch table.

Formats: "text" (aligned tables; drawn by rich, fitted to the width, on a terminal,
in colour unless NO_COLOR is set or TERM is dumb; plain aligned columns, never
wrapped, anywhere else, so logs stay greppable), "md" (Markdown tables, for CI logs
and issues) and "json" (the report itself; printed by the CLI, not here).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from bnfold import words
from bnfold.report import CheckResult, FoldReport, OutputCheck
from bnfold.words import totals

FORMATS = ("text", "md", "json")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    numeric: frozenset[int] = frozenset()  # right-aligned columns
    styles: list[str | None] = field(default_factory=list)  # per row, for a terminal


@dataclass(frozen=True)
class Line:
    text: str
    style: str | None = None  # rich style on a terminal: "green", "bold red", …


Block = Table | Line


class Printer:
    """Prints blocks to one stream in one format."""

    def __init__(self, stream: TextIO, fmt: str = "text") -> None:
        self.stream = stream
        self.fmt = fmt
        self.console = _console(stream) if fmt == "text" else None

    def print(self, blocks: Iterable[Block]) -> None:
        for block in blocks:
            if isinstance(block, Table):
                self._table(block)
            elif self.console is not None:
                self.console.print(block.text, style=block.style, markup=False, highlight=False)
            else:
                self.stream.write(block.text + "\n")
        self.stream.flush()

    def _table(self, table: Table) -> None:
        if self.console is not None:
            self.console.print(_rich_table(table))
        elif self.fmt == "md":
            self.stream.write("".join(line + "\n" for line in markdown_table(table)))
        else:
            self.stream.write("".join(line + "\n" for line in plain_table(table)))


def _console(stream: TextIO):
    """A rich console for a terminal; None elsewhere (plain text)."""
    if not hasattr(stream, "isatty") or not stream.isatty():
        return None
    from rich.console import Console

    plain = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
    return Console(
        file=stream, no_color=plain, color_system=None if plain else "auto", highlight=False, soft_wrap=False
    )


def _rich_table(table: Table):
    from rich import box
    from rich.table import Table as RichTable

    drawn = RichTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for index, column in enumerate(table.columns):
        drawn.add_column(
            column,
            justify="right" if index in table.numeric else "left",
            overflow="fold",
            no_wrap=index in table.numeric,
        )
    for index, row in enumerate(table.rows):
        style = table.styles[index] if index < len(table.styles) else None
        drawn.add_row(*row, style=style)
    return drawn


def plain_table(table: Table) -> list[str]:
    widths = [max([len(column), *(len(row[i]) for row in table.rows)]) for i, column in enumerate(table.columns)]

    def line(cells: list[str]) -> str:
        aligned = [
            cell.rjust(widths[i]) if i in table.numeric else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ]
        return "  ".join(aligned).rstrip()

    return [line(table.columns), line(["-" * width for width in widths]), *(line(row) for row in table.rows)]


def markdown_table(table: Table) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    rule = "|" + "|".join("---:" if i in table.numeric else "---" for i in range(len(table.columns))) + "|"
    return [line(table.columns), rule, *(line(row) for row in table.rows)]


class View:
    """How the CLI shows results: the format, whether summaries are silenced (`--quiet`; never errors), whether
    the plan lists every node. Summaries and tables go to stderr, the plan to stdout, JSON alone to stdout."""

    def __init__(self, fmt: str, quiet: bool, every_node: bool) -> None:
        self.fmt, self.quiet, self.every_node = fmt, quiet, every_node

    @property
    def progress(self) -> bool | None:
        """Whether to draw progress: never when quiet or printing JSON; else on a terminal (None)."""
        return False if self.quiet or self.fmt == "json" else None

    def show(self, blocks: Iterable[Block], stream: TextIO | None = None) -> None:
        Printer(stream or sys.stderr, self.fmt).print(blocks)

    def json(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def show_fold(self, report: FoldReport) -> None:
        if self.fmt == "json":
            self.json(report.to_json())
        elif not self.quiet:
            self.show(fold_summary(report))

    def show_plan(self, report: FoldReport) -> None:
        if self.fmt == "json":
            self.json(report.to_json())
        elif not self.quiet:
            self.show(plan(report, self.every_node), sys.stdout)

    def show_batch(self, items, text: str) -> None:
        """The batch table (or its JSON `text`); each failed model's error even when that is all that is shown."""
        if self.fmt == "json":
            self.json(text)
        elif not self.quiet:
            self.show(batch_table(items))
        failed = [item for item in items if item.exit_code != 0]
        if failed and (self.quiet or self.fmt == "json"):
            self.show([Line(f"bnfold: error: {_about(item.source, item.error)}") for item in failed])


def _about(source, error: str | None) -> str:
    """The error, naming the model it is about."""
    return error if error and str(source) in error else f"{source}: {error}"


# --- what is shown -------------------------------------------------------------------------------


def fold_summary(report: FoldReport) -> list[Block]:
    """Op counts and sizes before → after, what became of each BN, the check, where it went and how long."""
    blocks: list[Block] = []
    if report.ops:
        blocks.append(_op_table(report))
    blocks += _bn_lines(report)
    blocks += check_lines(report.check, report.unchanged)
    if report.output is not None:
        took = f" in {report.seconds:.2f} s" if report.seconds is not None else ""
        blocks.append(Line(f"wrote {report.output}{took}"))
    return blocks


def plan(report: FoldReport, every_node: bool = False) -> list[Block]:
    """The dry run: the BNs that will not be folded (every node with `every_node`), a total, diagnostics."""
    shown = report.records if every_node else [r for r in report.batch_norms() if r.action != "folded"]
    blocks: list[Block] = [Line(f"plan for {report.model}: nothing written")]
    if shown:
        table = Table(["node", "op", "action", "pattern", "into", "reason"])
        for record in shown:
            table.rows.append(
                [record.name, record.op, record.action, record.pattern or "", record.into or "", record.reason or ""]
            )
            table.styles.append(_ACTION_STYLES.get(record.action))
        blocks.append(table)
    elif report.batch_norms():
        blocks.append(Line("every BatchNormalization folds (--all lists them)"))
    blocks.append(Line(totals(len(report.batch_norms()), report.counts()) + _others(report) + " (planned)"))
    if report.diagnostics is not None:
        blocks.append(Line(_diagnostics_line(report.diagnostics)))
    return blocks


def batch_table(items) -> list[Block]:
    """One row per model of a batch: BN counts, the check, the outcome."""
    table = Table(
        ["model", "BN", "folded", "kept", "converted", "skipped", "check", "result"], numeric=frozenset({1, 2, 3, 4, 5})
    )
    for item in items:
        numbers = ["–"] * 5
        check = "–"
        if item.report is not None:
            counts = item.report.counts()
            numbers = [
                str(len(item.report.batch_norms())),
                *(str(counts[a]) for a in ("folded", "kept", "converted", "skipped")),
            ]
            check = _short_check(item.report.check)
        result = f"wrote {item.destination}" if item.exit_code == 0 else f"exit {item.exit_code}: {item.error}"
        table.rows.append([str(item.source), *numbers, check, result])
        table.styles.append(None if item.exit_code == 0 else "red")
    return [table]


def check_lines(check: CheckResult | None, unchanged: bool = False) -> list[Line]:
    if check is None:
        return [Line("check: not needed (nothing was changed)" if unchanged else "check: not run")]
    counted = f"{len(check.outputs)} outputs, {len(check.sites)} sites"
    if check.passed:
        value, channel = check.largest_errors()
        detail = (
            ""
            if value is None or channel is None
            else (
                f"; max rel err {value.value_rel_err:.2e} ({value.name}), "
                f"{channel.max_rel_err:.2e} of one channel's own values ({channel.name})"
            )
        )
        return [Line(f"check: passed ({counted}{detail})", "green")]
    if check.verdict == "inconclusive":
        unreached = [c.name for c in check.sites if not c.exercised]
        reason = words.NO_EVIDENCE
        if unreached:
            reason += f"; never reached: {', '.join(unreached[:5])}"
        return [Line(f"check: INCONCLUSIVE ({counted}): {reason} (written; --strict refuses)", "yellow")]
    lines = [Line(f"check: FAILED ({counted})", "bold red")]
    for kind, values in (("site", check.sites), ("output", check.outputs)):
        lines += [Line("  " + _failure_line(kind, value), "red") for value in values if not value.passed]
    return lines


_ACTION_STYLES = {"folded": None, "kept": "yellow", "converted": "cyan", "skipped": "red"}


def _op_table(report: FoldReport) -> Table:
    table = Table(["op", "before", "after"], numeric=frozenset({1, 2}))
    for op, (before, after) in sorted(report.ops.items()):
        table.rows.append([op, str(before), str(after)])
        table.styles.append("green" if after < before else ("yellow" if after > before else None))
    before_total = sum(before for before, _ in report.ops.values())
    after_total = sum(after for _, after in report.ops.values())
    table.rows.append(["total", str(before_total), str(after_total)])
    table.styles.append("bold")
    if report.size is not None:
        table.rows.append(["size", human_bytes(report.size[0]), human_bytes(report.size[1])])
        table.styles.append("bold")
    return table


def _bn_lines(report: FoldReport) -> list[Block]:
    bns = report.batch_norms()
    folded_into = Counter(words.target_kind(r.pattern, r.into) for r in bns if r.action == "folded")
    targets = ", ".join(f"{n} {kind}" for kind, n in sorted(folded_into.items()))
    blocks: list[Block] = [Line(totals(len(bns), report.counts(), targets) + _others(report))]
    left = [r for r in bns if r.action != "folded"]
    if left:
        table = Table(["BN", "action", "as", "reason"])
        for record in left:
            table.rows.append([record.name, record.action, record.into or "", record.reason or ""])
            table.styles.append(_ACTION_STYLES.get(record.action))
        blocks.append(table)
    return blocks


def _others(report: FoldReport) -> str:
    others = report.others_folded()
    if not others:
        return ""
    return "; also folded: " + ", ".join(f"{n} {op}" for op, n in sorted(others.items()))


def _short_check(check: CheckResult | None) -> str:
    if check is None:
        return "–"
    value, _ = check.largest_errors()
    worst = check.first_failure() if check.failed else value
    detail = "" if worst is None else f" ({(worst.max_rel_err if check.failed else worst.value_rel_err):.1e})"
    return words.VERDICTS[check.verdict] + detail


def _failure_line(kind: str, value: OutputCheck) -> str:
    line = words.failure_line(kind, value.name, value.bn, value.channel, value.measured(), value.max_rel_err)
    return line + (f" ({value.note})" if value.note else "")


def _diagnostics_line(diagnostics: dict) -> str:
    def channels(attribute: str) -> int:
        return sum(len(getattr(d, attribute)) for d in diagnostics.values())

    training = sum(d.training is not None for d in diagnostics.values())
    return (
        f"diagnostics: ε dominates σ² in {channels('epsilon_dominates')} channels, "
        f"{channels('dead')} dead channels (γ ≈ 0), {channels('fp16_overflow')} channels at fp16 overflow "
        f"risk after folding, {training} BN in training mode (bnfold IN --explain NODE for one BN)"
    )


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop returns
