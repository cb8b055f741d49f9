"""The habits of people who fold models: folders that do not exist yet, pipes, -h/-V, onnxsim's --input-shape,
reports that name a failure, errors that are never silent, tables that fit a terminal."""

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLE, FakeClock, FakeTerminal, assert_refused, invoke
from helpers import make_model
from onnx import helper, numpy_helper

import bnfold
from bnfold.cli.display import Line, Printer, Table
from bnfold.cli.options import parse_shapes
from bnfold.cli.progress import TerminalProgress
from bnfold.errors import InputError


def bnfold_process(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "bnfold", *map(str, args)], capture_output=True, text=True, **kwargs)


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "in.onnx"
    shutil.copy(SAMPLE, path)
    return path


@pytest.fixture
def broken(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    return path


# --- 1. paths --------------------------------------------------------------------------------------


def test_the_output_folder_is_created(sample, tmp_path):
    out = tmp_path / "new" / "deeper" / "out.onnx"
    result = invoke(sample, out)
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_a_created_output_folder_goes_again_when_the_check_fails(sample, tmp_path, monkeypatch):
    from bnfold.folding import fold_math

    original = fold_math.fold_output_channels
    monkeypatch.setattr(
        fold_math,
        "fold_output_channels",
        lambda w, b, s, t, **k: (original(w, b, s, t, **k)[0] * 1.1, original(w, b, s, t, **k)[1]),
    )
    result = invoke(sample, tmp_path / "new" / "deeper" / "out.onnx", "--strict")
    assert result.exit_code == 1
    assert not (tmp_path / "new").exists()


def test_the_batch_output_folder_is_created_and_quiet_still_shows_errors(sample, broken, tmp_path):
    out, report = tmp_path / "folded" / "here", tmp_path / "r.json"
    result = invoke(sample, broken, "-o", out, "--jobs", 2, "--report", report, "--quiet")
    assert result.exit_code == 2
    assert (out / "in.onnx").is_file() and not (out / "broken.onnx").exists()
    assert result.stdout == ""
    assert assert_refused(result) == (
        f"bnfold: error: {broken}: not an ONNX model (Error parsing message "
        "with type 'onnx.ModelProto': Wire format was corrupt)"
    )
    data = json.loads(report.read_text())
    assert [m["exit_code"] for m in data["models"]] == [0, 2] and data["exit_code"] == 2


def test_the_report_names_a_failure_on_input(broken, tmp_path):
    report = tmp_path / "reports" / "r.json"
    result = invoke(broken, tmp_path / "out.onnx", "--report", report)
    assert result.exit_code == 2
    data = json.loads(report.read_text())
    assert data["error"].startswith(f"{broken}: not an ONNX model") and data["exit_code"] == 2
    assert data["nodes"] == [] and data["check"] is None and data["output"] is None


def test_the_report_names_a_usage_failure_before_any_model_is_read(sample, tmp_path):
    report = tmp_path / "r.json"
    result = invoke(sample, tmp_path / "out.onnx", "--shape", "image=axb", "--report", report)
    assert result.exit_code == 2
    assert json.loads(report.read_text())["error"] == "--shape 'image=axb' is not NAME:1,3,224,224 or NAME=1x3x224x224"


def test_a_batch_that_fails_on_input_writes_its_report(tmp_path):
    (tmp_path / "empty").mkdir()
    report = tmp_path / "r.json"
    result = invoke(tmp_path / "empty", "-o", tmp_path / "out", "--report", report)
    assert result.exit_code == 2
    assert json.loads(report.read_text()) == {"models": [], "exit_code": 2, "error": "no .onnx model among the inputs"}


def test_a_failure_report_never_overwrites_a_file_that_is_not_a_report(broken, tmp_path):
    precious = tmp_path / "weights.bin"
    precious.write_bytes(b"\x00\x01 not json")
    assert invoke(broken, tmp_path / "out.onnx", "--report", precious).exit_code == 2
    assert precious.read_bytes() == b"\x00\x01 not json"
    assert invoke(broken, tmp_path / "out.onnx", "--report", broken).exit_code == 2
    assert broken.read_bytes() == b"not a model"


def test_fold_file_writes_the_failure_report_too(broken, tmp_path):
    with pytest.raises(InputError):
        bnfold.fold_file(broken, tmp_path / "out.onnx", report=tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["exit_code"] == 2


# --- 2. errors are never silent -------------------------------------------------------------------


def test_quiet_never_silences_an_error(tmp_path):
    result = invoke(tmp_path / "missing.onnx", tmp_path / "out.onnx", "--quiet")
    assert result.exit_code == 2
    assert assert_refused(result) == f"bnfold: error: {tmp_path / 'missing.onnx'}: no such file"


def test_a_closed_stdout_pipe_ends_quietly(sample):
    process = subprocess.Popen(
        [sys.executable, "-m", "bnfold", str(sample), "--dry-run", "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader is gone before bnfold prints its plan
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0
    assert stderr == b""


def test_a_pipe_into_head_shows_the_first_line_and_nothing_else(sample):
    piped = subprocess.run(
        f"{sys.executable} -m bnfold {sample} --dry-run --all --format md | head -1",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert piped.stdout == f"plan for {sample}: nothing written\n"
    assert piped.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "No such option: --frobnicate"),
        ([], "Missing argument 'IN [OUT] | IN... -o DIR'."),
        (["--standalone", "both"], "'both' is not one of 'bn', 'mul-add'."),
        (["--rtol", "-1"], "Invalid value for '--rtol': must be a finite number >= 0, not -1.0"),
        (["--atol", "nan"], "Invalid value for '--atol': must be a finite number >= 0, not nan"),
    ],
)
def test_usage_errors_are_one_line(sample, args, message):
    result = bnfold_process(*([sample, "out.onnx"] if args else []), *args)
    assert result.returncode == 2
    line = assert_refused(result)
    assert message in line and line.endswith("(bnfold -h for help)")


def test_onnxruntime_log_lines_never_reach_the_terminal(tmp_path):
    rng = np.random.default_rng(0)
    params = {name: rng.uniform(0.5, 1.5, 2).astype(np.float32) for name in ("s", "b", "m", "v")}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", *params], ["n"]),
        helper.make_node("Mystery", ["n"], ["y"], domain="com.example"),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in {**params, "w": np.ones((2, 1, 1, 1), np.float32)}.items()]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", 1, [1, 1, 2, 2])],
            [helper.make_tensor_value_info("y", 1, [1, 2, 2, 2])],
            inits,
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    source = tmp_path / "custom.onnx"
    onnx.save(model, source)
    result = bnfold_process(source, tmp_path / "o.onnx")
    assert result.returncode == 2
    line = assert_refused(result)  # onnxruntime's own words are inside bnfold's one line
    assert "onnxruntime cannot run the original model" in line and "com.example:Mystery" in line


# --- 3. conventions -------------------------------------------------------------------------------


def test_short_help_and_version():
    assert bnfold_process("-V").stdout == f"bnfold {bnfold.__version__}\n"
    helped = bnfold_process("-h")
    assert helped.returncode == 0 and "Usage: bnfold" in helped.stdout
    for choices in ("text|md|json", "auto|always|never", "bn|mul-add"):  # [a|b] or <a|b>, by typer's version
        assert choices in helped.stdout
    assert "<str>" not in helped.stdout and "<text>" not in helped.stdout


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("image:5,3,16,16", {"image": (5, 3, 16, 16)}),
        ("image=5x3x16x16", {"image": (5, 3, 16, 16)}),
        ("image:5x3x16x16", {"image": (5, 3, 16, 16)}),
        ("input:0:1,3,8,8", {"input:0": (1, 3, 8, 8)}),  # tf2onnx names end in :0
        ("input:0=1x3x8x8", {"input:0": (1, 3, 8, 8)}),
        ("5,3,16,16", {"": (5, 3, 16, 16)}),
    ],
)
def test_shape_spellings(spec, expected):
    assert parse_shapes([spec]) == expected


@pytest.mark.parametrize("option", ["--shape", "--input-shape"])
@pytest.mark.parametrize("spec", ["image:5,3,16,16", "5,3,16,16"])
def test_shape_reaches_the_check(sample, tmp_path, option, spec):
    result = invoke(sample, tmp_path / "o.onnx", option, spec, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["check"]["inputs"] == {"image": [5, 3, 16, 16]}


def test_a_bare_shape_needs_a_model_with_one_input(tmp_path):
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Conv", ["s", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "g", "t", "m", "v"], ["y"]),
    ]
    inits = {
        "w": rng.normal(size=(2, 3, 1, 1)).astype(np.float32),
        **{k: rng.uniform(0.5, 1.5, 2).astype(np.float32) for k in "gtmv"},
    }
    model = make_model(
        nodes, [("a", np.float32, ["N", 3, 4, 4]), ("b", np.float32, ["N", 3, 4, 4])], [("y", np.float32, None)], inits
    )
    source = tmp_path / "two.onnx"
    onnx.save(model, source)
    result = invoke(source, tmp_path / "o.onnx", "--shape", "2,3,4,4")
    assert result.exit_code == 2
    assert assert_refused(result) == (
        "bnfold: error: --shape 2,3,4,4: a shape without a name needs a model "
        "with one input; this one has 2 (a, b): write NAME:2,3,4,4"
    )


def test_tolerances_must_be_finite_and_not_negative_in_the_library_too(sample, tmp_path):
    with pytest.raises(InputError, match="rtol must be a finite number >= 0, not -1"):
        bnfold.fold_file(sample, tmp_path / "o.onnx", rtol=-1)
    with pytest.raises(InputError, match="atol must be a finite number >= 0, not inf"):
        bnfold.verify(sample, sample, atol=float("inf"))
    assert not (tmp_path / "o.onnx").exists()


def test_explain_json(sample):
    result = invoke(sample, "--explain", "bn3", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert (data["name"], data["plan"]["action"]) == ("bn3", "kept")
    assert len(data["numbers"]["scale"]) == len(data["numbers"]["gamma"]) > 0


# --- 4. terminal output ---------------------------------------------------------------------------


def test_the_summary_shows_ops_sizes_and_time(sample, tmp_path):
    out = tmp_path / "out.onnx"
    result = invoke(sample, out, "--report", tmp_path / "r.json")
    lines = result.stderr.splitlines()

    def row(first: str) -> str:
        return next(line for line in lines if line.startswith(first))

    assert re.fullmatch(r"BatchNormalization +8 +2", row("BatchNormalization"))
    assert re.fullmatch(r"total +23 +17", row("total"))
    assert re.fullmatch(r"size +\d+\.\d KiB +\d+\.\d KiB", row("size"))
    assert re.fullmatch(rf"wrote {re.escape(str(out))} in \d+\.\d\d s", lines[-1])
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ops"]["BatchNormalization"] == [8, 2] and data["output"] == str(out)
    assert data["size"]["before"] == sample.stat().st_size and data["size"]["after"] == out.stat().st_size
    assert data["seconds"] > 0 and data["error"] is None and data["exit_code"] == 0


def test_dry_run_lists_what_does_not_fold_and_all_lists_everything(sample):
    short = invoke(sample, "--dry-run").stdout.splitlines()
    every = invoke(sample, "--dry-run", "--all").stdout.splitlines()
    named = [line.split()[0] for line in short[3:-2]]
    assert named == ["input_norm", "bn3"]
    assert [line.split()[0] for line in every[3:-2]][:4] == ["input_norm", "bn1", "bn2", "bn2b"]
    assert short[-2] == every[-2] == "8 BatchNormalization: 6 folded, 2 kept, 0 converted, 0 skipped (planned)"


@pytest.mark.parametrize("fmt", ["md", "json", "text"])
def test_format_applies_to_the_plan_the_summary_and_the_batch(sample, tmp_path, fmt):
    plan = invoke(sample, "--dry-run", "--format", fmt)
    summary = invoke(sample, tmp_path / "o.onnx", "--format", fmt)
    batch = invoke(sample, "-o", tmp_path / "b", "--format", fmt)
    if fmt == "json":
        assert json.loads(plan.stdout)["summary"]["kept"] == 2
        assert json.loads(summary.stdout)["check"]["verdict"] == "passed"
        assert json.loads(batch.stdout)["models"][0]["exit_code"] == 0
        assert plan.stderr == summary.stderr == batch.stderr == ""
    elif fmt == "md":
        assert "| node | op | action | pattern | into | reason |" in plan.stdout
        assert "| op | before | after |" in summary.stderr
        assert "| model | BN | folded | kept | converted | skipped | check | result |" in batch.stderr
    else:
        assert "|" not in plan.stdout + summary.stderr + batch.stderr.replace(str(tmp_path), "")
        assert re.search(r"^model +BN +folded +kept +converted +skipped +check +result$", batch.stderr, re.M)


@pytest.mark.parametrize(
    ("environment", "coloured"), [({}, True), ({"NO_COLOR": "1"}, False), ({"TERM": "dumb"}, False)]
)
def test_colour_on_a_terminal_respects_no_color_and_dumb_terminals(monkeypatch, environment, coloured):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    stream = FakeTerminal()
    Printer(stream, "text").print(
        [Table(["op", "before"], [["Conv", "3"]], frozenset({1}), ["green"]), Line("check: passed", "green")]
    )
    text = stream.getvalue()
    assert "Conv" in text and "check: passed" in text
    assert ("\x1b[" in text) == coloured


def test_plain_text_tables_are_aligned_and_never_wrapped():
    stream = io.StringIO()
    long = "a reason " * 40
    Printer(stream, "text").print([Table(["BN", "reason"], [["bn1", long.strip()], ["b", "short"]])])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and lines[2].startswith("bn1  a reason") and lines[3].startswith("b    short")


def test_progress_counts_the_seconds_of_a_long_step():
    clock = FakeClock()
    stream = FakeTerminal()
    shown = TerminalProgress(stream, enabled=True, clock=clock, background=False)
    shown("checking", 0, 1)
    clock.now += 0.3  # within the first half second of the run: nothing is drawn
    shown.tick()
    clock.now += 0.3  # past it: the timer's redraws count the step's seconds
    shown.tick()
    clock.now += 0.4
    shown.tick()
    shown.close()
    drawn = stream.getvalue()
    assert "0.3 s" not in drawn and "bnfold: checking 0.6 s" in drawn and "bnfold: checking 1.0 s" in drawn


# --- 5. the API -----------------------------------------------------------------------------------


def test_short_reprs(sample, tmp_path):
    report = bnfold.fold_file(sample, tmp_path / "o.onnx")
    assert repr(report) == (
        f"FoldReport({str(sample)!r}: 8 BatchNormalization: 6 folded, 2 kept, 0 converted, 0 skipped; check passed)"
    )
    assert re.fullmatch(r"CheckResult\(passed: 1 outputs, 5 sites, max rel err \d\.\de-\d\d\)", repr(report.check))
    assert repr(bnfold.fold(onnx.load(sample))) == (
        "FoldResult(ModelProto: 8 BatchNormalization: 6 folded, 2 kept, 0 converted, 0 skipped)"
    )
    assert str(report) == repr(report)


@pytest.mark.parametrize(
    "call",
    [
        lambda p: bnfold.fold(p),
        lambda p: bnfold.verify(p, SAMPLE),
        lambda p: bnfold.verify(SAMPLE, p),
        lambda p: bnfold.fold_file(p, p.parent / "o.onnx"),
    ],
)
def test_missing_files_are_input_errors_everywhere(tmp_path, call):
    with pytest.raises(InputError, match="no such file"):
        call(tmp_path / "missing.onnx")


def test_the_package_ships_its_type_information():
    assert (Path(bnfold.__file__).parent / "py.typed").is_file()
