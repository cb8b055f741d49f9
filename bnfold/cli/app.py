"""The command line: Typer options, one library call per mode, an exit code.

Modes: `bnfold IN OUT` (fold, check, write), `bnfold IN --dry-run` (the plan),
`bnfold IN --explain NODE` (what one BN computes), `bnfold IN... -o DIR` (batch).
Exit codes: 0 done, 1 the equivalence check failed (nothing written), 2 bad input
or usage (nothing written); a batch exits with the worst of its models' codes.
Every error is one line on stderr, `bnfold: error: …` (usage errors too); --debug
adds the traceback. --quiet silences summaries and progress, never errors. A
closed stdout (`| head`) ends the run quietly, exit 0.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import sys
import traceback
import warnings
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from bnfold import __version__
from bnfold.cli.options import load_inputs, parse_shapes
from bnfold.errors import BnfoldError, CheckFailedError, InputError, Terminated, first_line


class Standalone(str, Enum):
    bn = "bn"
    mul_add = "mul-add"


class ExternalData(str, Enum):
    auto = "auto"
    always = "always"
    never = "never"


class Format(str, Enum):
    text = "text"
    md = "md"
    json = "json"


class _Command(TyperCommand):
    """Usage errors in bnfold's one-line form, and a closed stdout pipe as a quiet exit 0."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except OSError as error:
            if error.errno != errno.EPIPE:
                raise
            _stdout_closed()
        except Exception as error:  # click's UsageError and kin: from typer's own click, whichever it is
            if not hasattr(error, "format_message") or not hasattr(error, "exit_code"):
                raise
            sys.stderr.write(f"bnfold: error: {_one_line(error.format_message())} (bnfold -h for help)\n")
            sys.exit(error.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bnfold {__version__}")
        raise typer.Exit()


def _tolerance(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"must be a finite number >= 0, not {value}")
    return value


@app.command(cls=_Command)
def run(
    paths: list[Path] = typer.Argument(
        ...,
        metavar="IN [OUT] | IN... -o DIR",
        help="The model to fold (never modified) and where to write it (its folder "
        "is created); with -o, any number of models or folders of models.",
    ),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="Batch mode: fold every input into this folder (created)."
    ),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Batch mode: models folded in parallel processes."),
    explain: str | None = typer.Option(
        None, "--explain", metavar="NODE", help="Show what one BN (name or index) computes, with its numbers."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show the BNs that will not fold, and diagnostics; write nothing."
    ),
    every_node: bool = typer.Option(False, "--all", help="With --dry-run: list every BN, folded ones too."),
    no_check: bool = typer.Option(False, "--no-check", help="Write without the onnxruntime equivalence check."),
    bn_only: bool = typer.Option(
        False,
        "--bn-only",
        help="Fold only BNs and the per-channel Mul/Add/Sub/Div of their chains "
        "(default: such nodes fold into a linear layer next to them, BN or not).",
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Treat an inconclusive check (no changed value held evidence) as failed: exit 1, nothing written.",
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Write the JSON report here (every BN, the check; the error when the run fails)."
    ),
    output_format: Format = typer.Option(
        Format.text,
        "--format",
        case_sensitive=False,
        help="text (aligned tables), md (Markdown) or json (the report, on stdout).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Same as --format json."),
    standalone: Standalone = typer.Option(
        Standalone.bn,
        "--standalone",
        case_sensitive=False,
        help="What a BN with nothing to fold into becomes: bn (one "
        "BatchNormalization, absorbing its per-channel Mul/Add neighbours) "
        "or mul-add (for runtimes without BatchNormalization).",
    ),
    shape: list[str] = typer.Option(
        [],
        "--shape",
        "--input-shape",
        metavar="NAME:1,3,224,224",
        help="Input shape for the check: NAME:1,3,224,224 or NAME=1x3x224x224, "
        "repeatable; a bare 1,3,224,224 for a model with one input.",
    ),
    inputs: Path | None = typer.Option(None, "--inputs", help="An .npz of input arrays for the check (by input name)."),
    rtol: float | None = typer.Option(
        None, "--rtol", callback=_tolerance, help="Relative tolerance for the check (finite, >= 0); default by dtype."
    ),
    atol: float | None = typer.Option(
        None, "--atol", callback=_tolerance, help="Absolute tolerance for the check (finite, >= 0); default by dtype."
    ),
    external_data: ExternalData = typer.Option(
        ExternalData.auto,
        "--external-data",
        case_sensitive=False,
        help="Weights in OUT.<token>.data: auto (as the input, or when over 2 GB), always, never.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary or progress (errors are still shown)."),
    debug: bool = typer.Option(False, "--debug", help="Log every decision; show tracebacks."),
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Fold BatchNormalization into Conv/ConvTranspose/Gemm/MatMul, check the result on onnxruntime, write it.

    A BN with nothing to fold into stays one BatchNormalization (absorbing its
    per-channel Mul/Add neighbours); BNs that cannot be changed safely (training mode,
    non-constant parameters, ...) are left as they are, with the reason.

    \b
    bnfold in.onnx out.onnx                fold, check, write
    bnfold in.onnx --dry-run               the BNs that will not fold, and why
    bnfold in.onnx --explain bn1           what one BN computes (name or index)
    bnfold a.onnx b.onnx models/ -o out/   batch; --jobs N for parallel processes
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="bnfold: %(message)s")
    if not debug:  # the process is ours: a library's warning (numpy's RuntimeWarning) is a detail for --debug
        warnings.simplefilter("ignore")
    fmt = Format.json if json_out else output_format
    from bnfold.cli.display import View

    view = View(fmt.value, quiet and fmt != Format.json, every_node)
    options: dict[str, Any] = dict(
        check=not no_check,
        standalone=standalone.value,
        bn_only=bn_only,
        external_data=external_data.value,
        rtol=rtol,
        atol=atol,
        strict=strict,
    )
    try:
        try:
            options.update(inputs=load_inputs(inputs), shapes=parse_shapes(shape))
        except BnfoldError as error:
            _report_early_failure(report, paths, error)
            raise
        if explain is not None:
            _explain(_single_input(paths, "--explain"), explain, view)
        elif output_dir is not None:
            _batch(paths, output_dir, jobs, options, report, view)
        else:
            _single(paths, dry_run, options, report, view)
    except BnfoldError as error:
        _fail(error, debug)
    except KeyboardInterrupt as error:
        _fail(error, debug, message="interrupted; nothing was written", code=130)
    except Terminated as error:
        _fail(error, debug, message="terminated; nothing was written", code=error.exit_code)
    except BrokenPipeError:
        _stdout_closed()
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001 - the CLI never shows a bare traceback
        _fail(error, debug, prefix="internal error: ")


def _single(paths: list[Path], dry_run: bool, options: dict, report_path, view) -> None:
    from bnfold.api import fold_file
    from bnfold.cli.progress import TerminalProgress

    if len(paths) > 2 or (len(paths) == 1 and not dry_run):
        error = InputError("give IN OUT (or IN --dry-run, or IN... -o DIR for many models)")
        _report_early_failure(report_path, paths, error)
        raise error
    source, output = paths[0], (paths[1] if len(paths) == 2 else None)
    progress = TerminalProgress(enabled=view.progress)
    try:
        result = fold_file(source, output, dry_run=dry_run, progress=progress, report=report_path, **options)
    except CheckFailedError as error:
        progress.close()
        if error.report is not None:
            view.show_fold(error.report)
        raise
    finally:
        progress.close()
    if dry_run:
        view.show_plan(result)
    else:
        view.show_fold(result)
        if result.backed_out:
            from bnfold.words import backed_out

            sys.stderr.write(f"bnfold: warning: {backed_out(result.backed_out)}\n")


def _batch(paths: list[Path], output_dir: Path, jobs: int, options: dict, report_path, view) -> None:
    from bnfold.batch import batch_json, check_batch_report, fold_many, plan_outputs, worst_exit_code
    from bnfold.cli.progress import TerminalProgress
    from bnfold.model_io.safe_files import write_atomically

    try:
        planned = plan_outputs(paths, output_dir)
        if report_path is not None:
            check_batch_report(report_path, planned)
    except BnfoldError as error:
        _report_early_failure(report_path, paths, error, batch=True)
        raise
    progress = TerminalProgress(enabled=view.progress)
    items = fold_many(planned, jobs=jobs, progress=progress, **options)
    progress.close()
    text = batch_json(items)
    if report_path is not None:
        write_atomically(report_path, text + "\n")
    view.show_batch(items, text)
    raise typer.Exit(worst_exit_code(items))


def _explain(source: Path, node: str, view) -> None:
    from bnfold.explain import explain

    explanation = explain(source, node)
    if view.fmt == "json":
        view.json(explanation.to_json())
    else:
        sys.stdout.write(explanation.render() + "\n")


def _single_input(paths: list[Path], option: str) -> Path:
    if len(paths) != 1:
        raise InputError(f"{option} takes exactly one model")
    return paths[0]


def _report_early_failure(report_path: Path | None, paths: list[Path], error: BnfoldError, batch: bool = False) -> None:
    """A run that fails before any model is read still writes --report, naming the failure."""
    from bnfold.report import FoldReport
    from bnfold.runs.file_run import write_failure_report

    if batch:
        from bnfold.batch import batch_json

        text = batch_json([], error)
    else:
        message, code = first_line(error, 500), error.exit_code
        text = FoldReport(model=str(paths[0]) if paths else None, error=message, exit_code=code).to_json()
    write_failure_report(report_path, text, paths)


def _fail(
    error: BaseException, debug: bool, prefix: str = "", message: str | None = None, code: int | None = None
) -> None:
    if debug:
        traceback.print_exception(error)
    typer.echo(f"bnfold: error: {prefix}{message or first_line(error, 500)}", err=True)
    raise typer.Exit(code if code is not None else getattr(error, "exit_code", 2))


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _stdout_closed() -> None:
    """stdout's reader went away (`bnfold … | head -1`): nothing more to say; exit 0 without a second error
    when Python flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(0)


def main() -> None:
    from bnfold.cli.process import calm_garbage_collector, defer_sympy
    from bnfold.errors import terminate_on_sigterm

    defer_sympy()  # this process is ours: skip onnx-ir's unused sympy import (see cli/process.py)
    calm_garbage_collector()
    terminate_on_sigterm()
    app(prog_name="bnfold")


if __name__ == "__main__":  # pragma: no cover
    main()
