"""The command line: Typer options, one library call per mode, an exit code.

Modes: `bnfold IN OUT` (fold, check, write), `bnfold IN --dry-run` (the plan),
`bnfold IN --explain NODE` (what one BN computes), `bnfold IN... -o DIR` (batch).
Exit codes: 0 done, 1 the equivalence check failed (nothing written), 2 bad input
or usage (nothing written); a batch exits with the worst of its models' codes.
Errors are one line on stderr; --debug adds the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from bnfold import __version__
from bnfold.errors import BnfoldError, CheckFailedError, InputError, Terminated, first_line


class Standalone(str, Enum):
    bn = "bn"
    mul_add = "mul-add"


app = typer.Typer(add_completion=True, pretty_exceptions_enable=False, rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bnfold {__version__}")
        raise typer.Exit()


@app.command()
def run(
    paths: list[Path] = typer.Argument(..., metavar="IN [OUT] | IN... -o DIR",
                                       help="The model to fold (never modified) and where to write it; "
                                            "with -o, any number of models or folders of models."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o",
                                              help="Batch mode: fold every input into this folder."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Batch mode: models folded in parallel processes."),
    explain: Optional[str] = typer.Option(None, "--explain", metavar="NODE",
                                          help="Show what one BN (name or index) computes, with its numbers."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Show the plan for every BN and per-model diagnostics; write nothing."),
    no_check: bool = typer.Option(False, "--no-check", help="Write without the onnxruntime equivalence check."),
    bn_only: bool = typer.Option(False, "--bn-only",
                                 help="Fold only BNs and the per-channel Mul/Add/Sub/Div of their chains "
                                      "(default: such nodes fold into a linear layer next to them, BN or not)."),
    strict: bool = typer.Option(False, "--strict",
                                help="Treat an inconclusive check (no changed value held evidence) as failed: "
                                     "exit 1, nothing written."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report (every BN, the check) here."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON report on stdout (for pipelines)."),
    standalone: Standalone = typer.Option(Standalone.bn, "--standalone", case_sensitive=False,
                                          help="What a BN with nothing to fold into becomes: bn (one "
                                               "BatchNormalization, absorbing its per-channel Mul/Add neighbours) "
                                               "or mul-add (for runtimes without BatchNormalization)."),
    shape: list[str] = typer.Option([], "--shape", help="Input shape for the check, NAME=1x3x224x224 (repeatable)."),
    inputs: Optional[Path] = typer.Option(None, "--inputs",
                                          help="An .npz of input arrays for the check (by input name)."),
    rtol: Optional[float] = typer.Option(None, "--rtol",
                                         help="Relative tolerance (of max|output|) for the check; default by dtype."),
    atol: Optional[float] = typer.Option(None, "--atol", help="Absolute tolerance for the check; default by dtype."),
    external_data: str = typer.Option("auto", "--external-data",
                                      help="auto (as the input, or when over 2 GB), always, never."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary or progress on stderr (errors still)."),
    debug: bool = typer.Option(False, "--debug", help="Log every decision; show tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Fold BatchNormalization into Conv/ConvTranspose/Gemm/MatMul, check the result on onnxruntime, write it.

    A BN with nothing to fold into stays one BatchNormalization (absorbing its
    per-channel Mul/Add neighbours); BNs that cannot be changed safely (training mode,
    non-constant parameters, ...) are left as they are, with the reason.

    \b
    bnfold in.onnx out.onnx                fold, check, write
    bnfold in.onnx --dry-run               the plan for every BN, and diagnostics
    bnfold in.onnx --explain bn1           what one BN computes (name or index)
    bnfold a.onnx b.onnx models/ -o out/   batch; --jobs N for parallel processes
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="bnfold: %(message)s")
    options = dict(check=not no_check, standalone=standalone.value, bn_only=bn_only, external_data=external_data,
                   rtol=rtol, atol=atol, strict=strict)
    try:
        options.update(inputs=_load_inputs(inputs), shapes=_parse_shapes(shape))
        if explain is not None:
            _explain(_single_input(paths, "--explain"), explain)
        elif output_dir is not None:
            _batch(paths, output_dir, jobs, options, report, json_out, quiet or json_out)
        else:
            _single(paths, dry_run, options, report, json_out, quiet)
    except BnfoldError as error:
        _fail(error, debug)
    except KeyboardInterrupt as error:
        _fail(error, debug, message="interrupted; nothing was written", code=130)
    except Terminated as error:
        _fail(error, debug, message="terminated; nothing was written", code=error.exit_code)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001 - the CLI never shows a bare traceback
        _fail(error, debug, prefix="internal error: ")


def _single(paths: list[Path], dry_run: bool, options: dict, report_path, json_out: bool, quiet: bool) -> None:
    from bnfold.api import fold_file
    from bnfold.progress import TerminalProgress

    if len(paths) > 2 or (len(paths) == 1 and not dry_run):
        raise InputError("give IN OUT (or IN --dry-run, or IN... -o DIR for many models)")
    source, output = paths[0], (paths[1] if len(paths) == 2 else None)
    progress = TerminalProgress(enabled=False if quiet else None)
    try:
        result = fold_file(source, output, dry_run=dry_run, progress=progress, report=report_path, **options)
    except CheckFailedError as error:
        progress.close()
        if error.report is not None:
            _emit(error.report, json_out, quiet)
        raise
    progress.close()
    _emit(result, json_out, quiet, plan=dry_run)
    if not quiet and output is not None and not dry_run:
        typer.echo(f"wrote {output}", err=True)


def _batch(paths: list[Path], output_dir: Path, jobs: int, options: dict, report_path, json_out: bool,
           quiet: bool) -> None:
    from bnfold.batch import batch_table, check_batch_report, fold_many, plan_outputs, worst_exit_code
    from bnfold.progress import TerminalProgress
    from bnfold.staging import write_atomically

    planned = plan_outputs(paths, output_dir)
    if report_path is not None:
        check_batch_report(report_path, planned)
    progress = TerminalProgress(enabled=False if quiet else None)
    items = fold_many(planned, jobs=jobs, progress=progress, **options)
    progress.close()
    reports = [{**(item.report.to_dict() if item.report else {"model": str(item.source)}),
                "output": str(item.destination), "exit_code": item.exit_code, "error": item.error}
               for item in items]
    text = json.dumps({"models": reports, "exit_code": worst_exit_code(items)}, indent=2)
    if report_path is not None:
        write_atomically(report_path, text + "\n")
    if json_out:
        typer.echo(text)
    if not quiet:
        for line in batch_table(items):
            typer.echo(line, err=True)
    raise typer.Exit(worst_exit_code(items))


def _explain(source: Path, node: str) -> None:
    from bnfold.explain import explain

    typer.echo(explain(source, node).render())


def _single_input(paths: list[Path], option: str) -> Path:
    if len(paths) != 1:
        raise InputError(f"{option} takes exactly one model")
    return paths[0]


def _emit(result, json_out: bool, quiet: bool, plan: bool = False) -> None:
    if json_out:
        typer.echo(result.to_json())
    if quiet or json_out and not plan:
        return
    lines = result.plan_lines() if plan else result.summary_lines()
    for line in lines:
        typer.echo(line, err=not plan or json_out)


def _fail(error: BaseException, debug: bool, prefix: str = "", message: str | None = None,
          code: int | None = None) -> None:
    if debug:
        traceback.print_exception(error)
    typer.echo(f"bnfold: error: {prefix}{message or first_line(error, 500)}", err=True)
    raise typer.Exit(code if code is not None else getattr(error, "exit_code", 2))


def _parse_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for spec in specs:
        name, _, dims = spec.rpartition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise InputError(f"--shape '{spec}' is not NAME=AxBxC") from None
        if not name or any(d < 0 for d in shapes[name]):
            raise InputError(f"--shape '{spec}' is not NAME=AxBxC")
    return shapes


def _load_inputs(path: Optional[Path]):
    if path is None:
        return None
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise InputError(f"--inputs {path}: cannot read it as .npz ({error})") from None


def main() -> None:
    from bnfold._startup import calm_garbage_collector, defer_sympy, terminate_on_sigterm

    defer_sympy()  # this process is ours: skip onnx-ir's unused sympy import (see _startup.py)
    calm_garbage_collector()
    terminate_on_sigterm()
    app(prog_name="bnfold")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
