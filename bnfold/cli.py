"""The command line: Typer options, one library call, an exit code.

Exit codes: 0 done, 1 the equivalence check failed (nothing written), 2 bad input
or usage (nothing written). Errors are one line on stderr; --debug adds the traceback.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Optional

import typer

from bnfold import __version__
from bnfold.errors import BnfoldError, CheckFailedError, InputError, first_line

app = typer.Typer(add_completion=True, pretty_exceptions_enable=False, rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bnfold {__version__}")
        raise typer.Exit()


@app.command()
def run(
    model: Path = typer.Argument(..., help="The ONNX model to fold (never modified)."),
    output: Optional[Path] = typer.Argument(None, help="Where to write the folded model."),
    no_check: bool = typer.Option(False, "--no-check", help="Write without the onnxruntime equivalence check."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report (every BN, the check) here."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Report what would happen; write no model (OUTPUT not needed)."),
    keep_standalone: bool = typer.Option(False, "--keep-standalone",
                                         help="Leave BNs that fold into nothing as BN (default: rewrite as Mul+Add)."),
    shape: list[str] = typer.Option([], "--shape", help="Input shape for the check, NAME=1x3x224x224 (repeatable)."),
    inputs: Optional[Path] = typer.Option(None, "--inputs",
                                          help="An .npz of input arrays for the check (by input name)."),
    rtol: Optional[float] = typer.Option(None, "--rtol",
                                         help="Relative tolerance (of max|output|) for the check; default by dtype."),
    atol: Optional[float] = typer.Option(None, "--atol", help="Absolute tolerance for the check; default by dtype."),
    external_data: str = typer.Option("auto", "--external-data",
                                      help="auto (as the input, or when over 2 GB), always, never."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary on stderr (errors still)."),
    debug: bool = typer.Option(False, "--debug", help="Log every decision; show tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Fold BatchNormalization into Conv/ConvTranspose/Gemm/MatMul, check the result on onnxruntime, write it.

    BNs with nothing to fold into become Mul+Add; BNs that cannot be changed safely
    (training mode, non-constant parameters, ...) are left as they are, with the reason.
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="bnfold: %(message)s")
    from bnfold.api import fold_file  # keeps --help and --version fast

    try:
        if output is None and not dry_run:
            raise InputError("OUTPUT is required (or use --dry-run)")
        result = fold_file(model, output, check=not no_check, keep_standalone=keep_standalone,
                           external_data=external_data, dry_run=dry_run, inputs=_load_inputs(inputs),
                           shapes=_parse_shapes(shape), rtol=rtol, atol=atol)
    except BnfoldError as error:
        if isinstance(error, CheckFailedError) and error.report is not None:
            _emit(error.report, report, quiet)
        _fail(error, debug)
    except Exception as error:  # noqa: BLE001 - the CLI never shows a bare traceback
        _fail(error, debug, prefix="internal error: ")
    _emit(result, report, quiet)
    if not quiet and output is not None and not dry_run:
        typer.echo(f"wrote {output}", err=True)


def _emit(result, report_path: Optional[Path], quiet: bool) -> None:
    if report_path is not None:
        report_path.write_text(result.to_json() + "\n")
    if not quiet:
        for line in result.summary_lines():
            typer.echo(line, err=True)


def _fail(error: BaseException, debug: bool, prefix: str = "") -> None:
    if debug:
        traceback.print_exception(error)
    typer.echo(f"bnfold: error: {prefix}{first_line(error, 500)}", err=True)
    raise typer.Exit(getattr(error, "exit_code", 2))


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
    app()
