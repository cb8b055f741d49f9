"""Every command in README.md works as written.

The README's fenced blocks are run in a scratch folder holding a copy of the repo's
`models/` and `scripts/` (so the commands' relative paths work and nothing is written
into the clone):

* ```console: each `$ ` line is a command; the lines after it are its output (not compared);
* ```bash: each line is a command (a `#` after two spaces starts a comment);
* ```python: the block is one script;
* ```yaml: the lines of each `run: |` step are commands.

A command must exit 0, unless its comment says `# exit N`. Not run here: the Quick
start block and `pip install` lines (`.ci/run` runs those, in a fresh environment),
blocks tagged `ci` (`.ci/run` runs them too), blocks tagged `torch` when torch is not
installed, and blocks tagged `slow` (benchmarks): for those, the script must exist and
its `--help` must know every option the command uses.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import ROOT

README = ROOT / "README.md"
FENCE = re.compile(r"^```([\w-]*)[ \t]*([\w ,-]*)\n(.*?)^```[ \t]*$", re.M | re.S)
EXIT = re.compile(r"#\s*exit (\d+)\s*$")


@dataclass(frozen=True)
class Command:
    line: int
    kind: str  # "shell" or "python"
    text: str
    tags: frozenset[str]
    exit_code: int = 0

    @property
    def label(self) -> str:
        return f"README.md:{self.line}: {self.text.splitlines()[0][:60]}"


def readme_commands() -> list[Command]:
    text = README.read_text(encoding="utf-8")
    quick_start = text.index("## Quick start")
    found = []
    for match in FENCE.finditer(text):
        language, tags, body = match.group(1), frozenset(match.group(2).replace(",", " ").split()), match.group(3)
        line = text.count("\n", 0, match.start()) + 2
        if quick_start < match.start() < text.index("\n## ", quick_start + 1) and not language:
            continue  # the Quick start block: .ci/run runs it
        found += _commands(language, tags, body, line)
    return found


def _commands(language: str, tags: frozenset[str], body: str, line: int) -> list[Command]:
    if language == "python":
        return [Command(line, "python", body, tags)]
    if language == "console":
        lines = [(i, text[2:]) for i, text in enumerate(body.splitlines()) if text.startswith("$ ")]
    elif language == "bash":
        lines = [(i, text) for i, text in enumerate(body.splitlines()) if text.strip() and not text.startswith("#")]
    elif language == "yaml":
        lines = _yaml_run_lines(body)
    else:
        return []
    commands = []
    for offset, text in lines:
        command, _, comment = text.partition("  #")
        expected = EXIT.search("#" + comment) if comment else None
        if command.strip().startswith("pip install"):
            continue
        commands.append(
            Command(line + offset, "shell", command.strip(), tags, int(expected.group(1)) if expected else 0)
        )
    return commands


def _yaml_run_lines(body: str) -> list[tuple[int, str]]:
    lines, indent = [], None
    for index, text in enumerate(body.splitlines()):
        if re.match(r"\s*run:\s*\|\s*$", text):
            indent = len(text) - len(text.lstrip()) + 1
        elif indent is not None and text.strip() and len(text) - len(text.lstrip()) > indent:
            lines.append((index, text.strip()))
        else:
            indent = None
    return lines


COMMANDS = readme_commands()


def test_the_readme_has_commands_of_every_kind():
    kinds = {(command.kind, "slow" in command.tags, "torch" in command.tags) for command in COMMANDS}
    assert {("shell", False, False), ("python", False, False), ("shell", True, False)} <= kinds
    assert len(COMMANDS) >= 15


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    for name in ("models", "scripts"):
        shutil.copytree(ROOT / name, folder / name)
    return folder


@pytest.mark.parametrize("command", COMMANDS, ids=[command.label for command in COMMANDS])
def test_a_readme_command_works_as_written(command: Command, workspace: Path):
    if "ci" in command.tags:
        pytest.skip(".ci/run runs it")
    if "torch" in command.tags and find_spec("torch") is None:
        pytest.skip("needs torch")
    if "slow" in command.tags:
        _check_options_exist(command, workspace)
        return
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if command.kind == "python":
        run = subprocess.run(
            [sys.executable, "-c", command.text],
            cwd=workspace,
            capture_output=True,
            text=True,
            env=environment,
            timeout=600,
        )
    else:
        run = subprocess.run(
            command.text,
            shell=True,
            cwd=workspace,
            capture_output=True,
            text=True,
            env=environment,
            executable="/bin/bash",
            timeout=600,
        )
    assert run.returncode == command.exit_code, f"{command.label}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr, run.stderr


def _check_options_exist(command: Command, workspace: Path) -> None:
    """A long-running command: its script exists and knows the options the README gives it."""
    words = shlex.split(command.text)
    assert words[0] == "python" and (workspace / words[1]).is_file(), command.label
    helped = subprocess.run([sys.executable, words[1], "--help"], cwd=workspace, capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    for option in (word.split("=")[0] for word in words[2:] if word.startswith("--")):
        assert option in helped.stdout, f"{command.label}: {option} is not an option of {words[1]}"
