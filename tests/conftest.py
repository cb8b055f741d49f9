"""What the tests share about running bnfold and judging a refusal: one of each.

- `invoke(*args)`: the CLI in process (Typer's runner), every argument turned into a string.
- `assert_refused(result, message, code=2, folder=, before=)`: the refusal contract: the exit
  code, exactly one `bnfold: error:` line on stderr containing `message` (for exit 2,
  nothing else there), no traceback, and, given a folder and its snapshot from before,
  nothing in it changed (no output, no staging folder left, the input untouched). Returns the line.
- `refuse(tmp_path, source, message)`: `bnfold SOURCE OUT` run and held to that contract.
- `snapshot(folder)`: every file, folder and link below `folder`, with its bytes or target.
- `FakeTerminal`, `FakeClock`: a stream that says it is a terminal, and a clock a test moves.

The tiny-graph builders and the reference comparisons are in helpers.py; models built the
way exporters emit them are in builders/.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from typer.testing import CliRunner

from bnfold.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SAMPLE = MODELS / "sample_cnn.onnx"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict:
    """Every path below `folder`: a file's bytes, a link's target (never followed), None for a folder."""
    found: dict = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = ("link", os.readlink(path))
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = None
    return found


def assert_refused(result, message: str = "", code: int = 2, folder: Path | None = None, before=None) -> str:
    """Hold a finished run (Typer's Result or a subprocess's CompletedProcess) to the refusal contract."""
    exit_code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    stdout = result.output if hasattr(result, "output") else result.stdout
    assert exit_code == code, (exit_code, stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("bnfold: error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert code != 2 or lines == errors, result.stderr  # a refusal says one line; a failed check also shows its report
    assert "Traceback" not in result.stderr + stdout
    if folder is not None:
        assert snapshot(folder) == before
    return errors[0]


def refuse(tmp_path: Path, source: Path, message: str, out: Path | None = None) -> str:
    """Run `bnfold SOURCE OUT`: exit 2 with `message`, and nothing below tmp_path changed."""
    if out is None:
        out = tmp_path / "out" / "folded.onnx"
        out.parent.mkdir(exist_ok=True)
    before = snapshot(tmp_path)
    return assert_refused(invoke(source, out), message, folder=tmp_path, before=before)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    """A monotonic clock that moves only when a test moves it (`clock.now += 0.5`)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now
