"""Folding many models: inputs (files or folders) → an output folder, optionally in parallel.

Each model is folded, checked and written exactly as `fold_file` does it; one
model's failure (a failed check, a broken file) does not stop the others. The
batch's exit code is the worst of its models' (0 done, 1 check failed, 2 bad input).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from bnfold.errors import BnfoldError, CheckFailedError, InputError, first_line
from bnfold.report import ACTIONS, FoldReport


@dataclass
class BatchItem:
    source: Path
    destination: Path
    exit_code: int = 0
    report: FoldReport | None = None
    error: str | None = None


def plan_outputs(sources: list[Path], out_dir: Path) -> list[BatchItem]:
    """Each input model (folders expanded to their *.onnx, recursively) and where it goes in `out_dir`."""
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: output folder does not exist")
    items: list[BatchItem] = []
    for source in sources:
        if source.is_dir():
            items += [BatchItem(path, out_dir / path.relative_to(source)) for path in sorted(source.rglob("*.onnx"))
                      if not _is_inside(path, out_dir)]
        else:
            items.append(BatchItem(source, out_dir / source.name))
    if not items:
        raise InputError("no .onnx model among the inputs")
    seen: dict[Path, Path] = {}
    for item in items:
        if item.destination in seen:
            raise InputError(f"{seen[item.destination]} and {item.source} would both be written to {item.destination}")
        seen[item.destination] = item.source
    return items


def _is_inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def fold_many(items: list[BatchItem], jobs: int = 1, progress=None, **options) -> list[BatchItem]:
    """Fold every item (in `jobs` processes); `options` are fold_file's keyword arguments.

    `progress("models", done, total)` is told as each model finishes.
    """
    step = progress or (lambda *_: None)
    if jobs <= 1 or len(items) == 1:
        done = []
        for item in items:
            done.append(_fold_one(item, options))
            step("models", len(done), len(items))
        return done
    results: list[BatchItem | None] = [None] * len(items)
    with ProcessPoolExecutor(max_workers=min(jobs, len(items))) as pool:
        futures = {pool.submit(_fold_one, item, options): index for index, item in enumerate(items)}
        for finished, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            step("models", finished, len(items))
    return results


def _fold_one(item: BatchItem, options: dict) -> BatchItem:
    from bnfold.api import fold_file

    item.destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        item.report = fold_file(item.source, item.destination, **options)
    except CheckFailedError as error:
        item.exit_code, item.error, item.report = error.exit_code, str(error), error.report
    except BnfoldError as error:
        item.exit_code, item.error = error.exit_code, first_line(error, 500)
    except Exception as error:  # noqa: BLE001 - one broken model must not stop the batch
        item.exit_code, item.error = 2, f"internal error: {first_line(error, 500)}"
    return item


def worst_exit_code(items: list[BatchItem]) -> int:
    return max((item.exit_code for item in items), default=0)


def batch_table(items: list[BatchItem]) -> list[str]:
    """One line per model: BN counts, the check, the outcome."""
    lines = ["| model | BN | folded | kept | converted | skipped | check | result |", "|---" * 8 + "|"]
    for item in items:
        numbers = ["–"] * 5
        if item.report is not None:
            counts = item.report.counts()
            numbers = [len(item.report.batch_norms()), *(counts[action] for action in ACTIONS)]
        check = "–"
        if item.report is not None and item.report.check is not None:
            worst = item.report.check.worst()
            check = ("passed" if item.report.check.passed else "FAILED") + (
                f" ({worst.max_rel_err:.1e})" if worst is not None else "")
        result = f"wrote {item.destination}" if item.exit_code == 0 else f"exit {item.exit_code}: {item.error}"
        lines.append(f"| {item.source} | " + " | ".join(str(n) for n in numbers) + f" | {check} | {result} |")
    return lines
