"""Folding many models: inputs (files or folders) → an output folder, optionally in parallel (batch mode).

Each model is folded, checked and written exactly as `fold_file` does it, in a
process of its own: one model's failure (a failed check, a broken file, a worker
killed for lack of memory) does not stop the others. The batch's exit code is the
worst of its models' (0 done, 1 check failed, 2 bad input or a worker that died).
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from multiprocessing import connection
from pathlib import Path
from typing import Any

from bnfold.errors import BnfoldError, CheckFailedError, InputError, first_line
from bnfold.model_io.safe_files import check_folder_creatable, make_folders
from bnfold.model_io.staging import refuse_clobbering
from bnfold.report import FoldReport


@dataclass
class BatchItem:
    source: Path
    destination: Path
    exit_code: int = 0
    report: FoldReport | None = None
    error: str | None = None


def plan_outputs(sources: list[Path], out_dir: Path) -> list[BatchItem]:
    """Each input model (folders expanded to their *.onnx, recursively) and where it goes in `out_dir`."""
    check_folder_creatable(out_dir, "-o")
    items: list[BatchItem] = []
    for source in sources:
        if source.is_dir():
            items += [
                BatchItem(path, out_dir / path.relative_to(source))
                for path in sorted(source.rglob("*.onnx"))
                if not _is_inside(path, out_dir)
            ]
        else:
            items.append(BatchItem(source, out_dir / source.name))
    if not items:
        raise InputError("no .onnx model among the inputs")
    seen: dict[Path, Path] = {}
    for item in items:
        if item.destination in seen:
            raise InputError(f"{seen[item.destination]} and {item.source} would both be written to {item.destination}")
        seen[item.destination] = item.source
    sources = [item.source for item in items]
    for item in items:
        refuse_clobbering(sources, item.destination, None)
    make_folders(out_dir)
    return items


def check_batch_report(report: Path, items: list[BatchItem]) -> None:
    """The batch report may not be any input or output, and must be writable: refused before anything runs."""
    for item in items:
        refuse_clobbering([item.source], item.destination, None, report)


def _is_inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def fold_many(items: list[BatchItem], jobs: int = 1, progress=None, **options) -> list[BatchItem]:
    """Fold every item, each in a process of its own, `jobs` at a time; `options` are fold_file's arguments.

    A worker that dies (out of memory, killed) is that model's failure: "worker died: signal 9",
    exit code 2; the other models, the table and the report go on. `progress("models", done,
    total)` is told as each model finishes.
    """
    step = progress or (lambda *_: None)
    context = _process_context()
    waiting = list(enumerate(items))
    running: dict[Any, tuple[int, Any, Any]] = {}  # sentinel -> (index, process, connection)
    done: list[BatchItem | None] = [None] * len(items)
    try:
        while waiting or running:
            while waiting and len(running) < max(1, jobs):
                index, item = waiting.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(item, options, sender), daemon=True)
                process.start()
                sender.close()
                running[process.sentinel] = (index, process, receiver)
            for sentinel in connection.wait(list(running)):
                index, process, receiver = running.pop(sentinel)
                done[index] = _collect(items[index], process, receiver)
                step("models", len(items) - len(waiting) - len(running), len(items))
    finally:
        for _, process, _ in running.values():  # interrupted: stop the workers, which remove what they staged
            process.terminate()
            process.join()
    return [item for item in done if item is not None]


def _process_context():
    """fork where there is one (cheap: bnfold is already imported), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _worker(item: BatchItem, options: dict, sender) -> None:
    from bnfold.errors import terminate_on_sigterm

    terminate_on_sigterm()
    try:
        sender.send(_fold_one(item, options))
    finally:
        sender.close()


def _collect(item: BatchItem, process, receiver) -> BatchItem:
    try:
        result = receiver.recv() if receiver.poll() else None
    except (EOFError, OSError):  # the worker died before it sent anything
        result = None
    receiver.close()
    process.join()
    if result is not None:
        return result
    code = process.exitcode
    reason = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    item.exit_code, item.error = 2, f"worker died: {reason}"
    return item


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


def batch_json(items: list[BatchItem], error: BnfoldError | None = None) -> str:
    """The batch report: one entry per model (its fold report, where it went, its exit code), and the batch's
    exit code; a batch that failed before any model was read has no models and names its error."""
    if error is not None:
        return json.dumps({"models": [], "exit_code": error.exit_code, "error": first_line(error, 500)}, indent=2)
    models = [
        {
            **(item.report.to_dict() if item.report else {"model": str(item.source)}),
            "output": str(item.destination) if item.exit_code == 0 else None,
            "exit_code": item.exit_code,
            "error": item.error,
        }
        for item in items
    ]
    return json.dumps({"models": models, "exit_code": worst_exit_code(items), "error": None}, indent=2)
