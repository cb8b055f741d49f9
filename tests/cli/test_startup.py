"""The command line's start-up: sympy (imported by onnx-ir, unused by folding) is deferred, safely."""

import subprocess
import sys

from conftest import SAMPLE

from bnfold.cli.process import defer_sympy

SCRIPT = """
import sys
from bnfold.cli.process import defer_sympy
assert defer_sympy()
import bnfold, onnx_ir as ir
report = bnfold.fold_file(sys.argv[1], sys.argv[2])
assert report.check.passed
print("sympy loaded during the fold:", "sympy.core" in sys.modules)
print("symbolic arithmetic:", ir.SymbolicDim("N") * 2 + 1)
print("sympy loaded now:", "sympy.core" in sys.modules)
"""


def test_sympy_is_deferred_in_the_cli_process_and_still_works_when_needed(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SAMPLE), str(tmp_path / "out.onnx")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "sympy loaded during the fold: False",
        "symbolic arithmetic: 2*N + 1",
        "sympy loaded now: True",
    ]


LIBRARY_SCRIPT = """
import sys
import bnfold
report = bnfold.fold_file(sys.argv[1], sys.argv[2])
assert report.check.passed
print("sympy loaded by the library path:", "sympy.core" in sys.modules)
"""


def test_the_library_path_imports_onnx_ir_as_it_is(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", LIBRARY_SCRIPT, str(SAMPLE), str(tmp_path / "out.onnx")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["sympy loaded by the library path: True"]


def test_the_deferral_steps_aside_for_an_onnx_ir_without_the_module_it_replaces(tmp_path, monkeypatch):
    import importlib.util

    from bnfold.cli import process

    real = importlib.util.find_spec

    def find_spec(name, *args):
        spec = real(name, *args)
        if name == "onnx_ir" and spec is not None:
            spec = importlib.util.spec_from_file_location("onnx_ir", tmp_path / "onnx_ir" / "__init__.py")
        return spec

    monkeypatch.setattr(process.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(process, "sys", type("Modules", (), {"modules": {}})())
    assert process.defer_sympy() is False


def test_nothing_is_deferred_once_sympy_or_onnx_ir_is_imported():
    import onnx_ir  # noqa: F401 - this test process has imported them already

    before = dict(sys.modules)
    assert defer_sympy() is False
    assert sys.modules["sympy"] is before["sympy"]


GC_SCRIPT = """
import gc, sys
import bnfold
print(gc.get_threshold()[0])
sys.argv = ["bnfold", "--version"]
from bnfold.cli.app import main
try:
    main()
except SystemExit:
    pass
print(gc.get_threshold()[0])
"""


def test_only_the_cli_process_gets_the_calmer_garbage_collector():
    default = subprocess.run(
        [sys.executable, "-c", "import gc; print(gc.get_threshold()[0])"], capture_output=True, text=True
    ).stdout.strip()
    run = subprocess.run([sys.executable, "-c", GC_SCRIPT], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == default  # importing the library leaves the collector alone
    assert int(lines[-1]) == max(int(default), 10_000)


HEAP_SCRIPT = """
import gc, sys
import bnfold
from bnfold.model_io import collector

def fold(out):
    bnfold.fold_file(sys.argv[1], sys.argv[2] + out)
    return gc.get_freeze_count()

print("library:", fold("/a.onnx"), gc.isenabled())
collector.own_the_collector()
first = fold("/b.onnx")
second = fold("/c.onnx")
print("owned: frozen", first > 0, "| next model thawed the last:", abs(second - first) < first // 2)
print("collector paused:", not gc.isenabled())
"""


def test_only_an_owned_process_freezes_each_loaded_model_and_thaws_it_for_the_next(tmp_path):
    """The CLI pauses the collector and freezes a loaded model; loading the next thaws and collects the
    last, so the frozen set stays one model's size; the library never touches the collector."""
    run = subprocess.run(
        [sys.executable, "-c", HEAP_SCRIPT, str(SAMPLE), str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "library: 0 True",
        "owned: frozen True | next model thawed the last: True",
        "collector paused: True",
    ]
    for name in ("a", "b", "c"):
        assert (tmp_path / f"{name}.onnx").is_file()
