"""For the people who use it: explain, dry-run, JSON, batch mode, progress, pass manager, graphsurgeon."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import SAMPLE, FakeClock, FakeTerminal, invoke
from helpers import assert_same_outputs, assert_sample_folded, bn_arrays, bn_node, make_model
from onnx import helper

import bnfold
from bnfold.cli.progress import TerminalProgress

F32 = np.float32


def textbook_model(tmp_path, **bn_attrs) -> Path:
    """One BN with μ 0, σ² 1, γ 1, β 0 and ε 1e-3 on channel 0; ε-dominated and dead channels after it."""
    params = {
        "bn.scale": np.array([1.0, 2e-7, 1.0], F32),
        "bn.bias": np.array([0.0, 0.5, 0.0], F32),
        "bn.mean": np.zeros(3, F32),
        "bn.var": np.array([1.0, 1.0, 1e-4], F32),
    }
    outputs = ["z"] + (["rm", "rv"] if bn_attrs.get("training_mode") else [])
    node = helper.make_node("BatchNormalization", ["x", *params], outputs, name="norm", epsilon=1e-3, **bn_attrs)
    model = make_model([node], [("x", F32, ["N", 3, 4])], [("z", F32, None)], params, opset=15)
    path = tmp_path / "textbook.onnx"
    onnx.save(model, path)
    return path


# --- explain ------------------------------------------------------------------------------------


@pytest.mark.parametrize("node", ["norm", "0", "-1"])
def test_explain_shows_the_formula_and_the_numbers(tmp_path, node):
    result = invoke(textbook_model(tmp_path), "--explain", node)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "y = γ·(x − μ) / √(σ² + ε) + β" in out and "ε = 0.001, inside the square root" in out
    assert "s = γ / √(σ² + ε),  t = β − μ·s" in out
    assert "running mean μ and variance σ² stored in the model" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("0 "))
    assert row.split() == ["0", "1", "0", "0", "1", "0.9995004", "0"]
    assert "ε dominates σ² (σ² < 10·ε, so ε sets the scale): 1 channel (2)" in out
    assert "dead: γ ≈ 0 (|γ| < 1e-06; the channel outputs β whatever its input): 1 channel (1)" in out
    assert "bnfold: kept as BatchNormalization: no Conv, ConvTranspose, DeformConv, Gemm or MatMul before it" in out


def test_explain_a_training_mode_bn(tmp_path):
    out = invoke(textbook_model(tmp_path, training_mode=1), "--explain", "norm").stdout
    assert "training_mode=1 (uses batch statistics): it normalizes with the mean and variance of each batch" in out
    assert "bnfold: skipped, left as it is: training_mode=1 (uses batch statistics)" in out


def test_explain_shows_the_first_rows_and_a_summary_for_wide_layers(tmp_path):
    rng = np.random.default_rng(0)
    model = make_model([bn_node("x", "z")], [("x", F32, ["N", 40, 2])], [("z", F32, None)], bn_arrays(rng, 40))
    onnx.save(model, tmp_path / "wide.onnx")
    out = invoke(tmp_path / "wide.onnx", "--explain", "bn").stdout
    assert "… 24 more channels" in out and "40 channels; s from" in out


def test_explain_fp16_overflow_risk(tmp_path):
    rng = np.random.default_rng(1)
    params = bn_arrays(rng, 2)
    params["bn.var"] = np.array([1e-8, 1.0], F32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z")]
    model = make_model(
        nodes, [("x", F32, ["N", 1, 3, 3])], [("z", F32, None)], {"w": np.full((2, 1, 1, 1), 300.0, F32), **params}
    )
    onnx.save(model, tmp_path / "hot.onnx")
    out = invoke(tmp_path / "hot.onnx", "--explain", "bn").stdout
    assert "fp16 overflow risk after folding (|s|·max|W| > 65504): 1 channel (0)" in out


def test_explain_unknown_node(tmp_path):
    result = invoke(textbook_model(tmp_path), "--explain", "nope")
    assert result.exit_code == 2
    assert "no BatchNormalization named or numbered 'nope' (1 in the model: 'norm')" in result.stderr


# --- dry run and JSON ---------------------------------------------------------------------------


def test_json_prints_the_report_on_stdout(tmp_path):
    result = invoke(SAMPLE, tmp_path / "out.onnx", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert_report_schema(report)
    assert report["check"]["passed"] is True


def test_dry_run_json_has_the_diagnostics(tmp_path):
    result = invoke(textbook_model(tmp_path), "--dry-run", "--json")
    report = json.loads(result.stdout)
    assert_report_schema(report)
    assert report["diagnostics"]["norm"] == {
        "epsilon_dominates": [2],
        "dead": [1],
        "fp16_overflow": [],
        "training": None,
        "unreadable": None,
    }
    assert result.stderr == ""  # --json: the report is the output, nothing else is printed


def assert_report_schema(report: dict) -> None:
    """The documented schema: DESIGN.md's fields plus bnfold's additions, with their types."""
    assert set(report) >= {"model", "summary", "nodes", "check"}
    assert set(report["summary"]) == {"folded", "kept", "converted", "skipped"}
    for node in report["nodes"]:
        assert set(node) == {"name", "action", "into", "reason", "graph", "pattern", "op", "site"}
        assert node["site"] is None or isinstance(node["site"], str)
        assert node["action"] in ("folded", "kept", "converted", "skipped")
        assert isinstance(node["name"], str) and (node["into"] is None or isinstance(node["into"], str))
        assert node["reason"] is None or isinstance(node["reason"], str)
        assert node["action"] == "folded" or node["reason"]
    check = report["check"]
    if check is not None:
        assert check["verdict"] in ("passed", "failed", "inconclusive") and isinstance(check["passed"], bool)
        assert set(check) >= {"verdict", "passed", "outputs", "sites", "inputs"}
        for value in [*check["outputs"], *check["sites"]]:
            assert set(value) >= {"name", "max_abs_err", "max_rel_err", "informative", "passed"}
            assert all(isinstance(value[k], float) for k in ("max_abs_err", "max_rel_err"))
            assert isinstance(value["informative"], bool) and isinstance(value["passed"], bool)
        sites = {site["name"] for site in check["sites"]}
        assert all(node["site"] in sites for node in report["nodes"] if node["site"] is not None)


# --- batch mode ---------------------------------------------------------------------------------


def batch_inputs(tmp_path) -> tuple[list[Path], Path]:
    good = tmp_path / "in"
    (good / "nested").mkdir(parents=True)
    shutil.copy(SAMPLE, good / "a.onnx")
    shutil.copy(SAMPLE, good / "nested" / "b.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    out = tmp_path / "out"
    out.mkdir()
    return [good, broken], out


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_batch_with_a_failing_model_among_good_ones(tmp_path, jobs):
    inputs, out = batch_inputs(tmp_path)
    result = invoke(*inputs, "-o", out, "--jobs", jobs, "--report", tmp_path / "batch.json", "--format", "md")
    assert result.exit_code == 2
    assert (out / "a.onnx").exists() and (out / "nested" / "b.onnx").exists() and not (out / "broken.onnx").exists()
    table = result.stderr
    assert "| model | BN | folded | kept | converted | skipped | check | result |" in table
    assert f"wrote {out / 'a.onnx'}" in table and "exit 2: " in table and "not an ONNX model" in table
    report = json.loads((tmp_path / "batch.json").read_text())
    assert report["exit_code"] == 2 and [m["exit_code"] for m in report["models"]] == [0, 0, 2]


def test_batch_exit_code_is_the_worst_check_failure(tmp_path, monkeypatch):
    from bnfold.folding import fold_math

    original = fold_math.fold_output_channels
    monkeypatch.setattr(
        fold_math,
        "fold_output_channels",
        lambda w, b, s, t, **k: (original(w, b, s, t, **k)[0] * 1.1, original(w, b, s, t, **k)[1]),
    )
    shutil.copy(SAMPLE, tmp_path / "a.onnx")
    (tmp_path / "out").mkdir()
    result = invoke(tmp_path / "a.onnx", "-o", tmp_path / "out", "--strict")
    assert result.exit_code == 1 and not (tmp_path / "out" / "a.onnx").exists()


def test_batch_refuses_two_inputs_with_one_output_name(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    shutil.copy(SAMPLE, tmp_path / "x" / "m.onnx")
    shutil.copy(SAMPLE, tmp_path / "y" / "m.onnx")
    (tmp_path / "out").mkdir()
    result = invoke(tmp_path / "x" / "m.onnx", tmp_path / "y" / "m.onnx", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "would both be written to" in result.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_single_model_usage_is_unchanged(tmp_path):
    result = invoke(SAMPLE, tmp_path / "o.onnx")
    assert result.exit_code == 0 and (tmp_path / "o.onnx").exists()


def test_explain_dry_run_and_json_in_a_real_subprocess(tmp_path):
    explained = subprocess.run(
        [sys.executable, "-m", "bnfold", str(textbook_model(tmp_path)), "--explain", "norm"],
        capture_output=True,
        text=True,
    )
    assert explained.returncode == 0 and "0.9995004" in explained.stdout
    planned = subprocess.run(
        [sys.executable, "-m", "bnfold", str(SAMPLE), "--dry-run", "--json"], capture_output=True, text=True
    )
    assert planned.returncode == 0
    assert_report_schema(json.loads(planned.stdout))
    assert planned.stderr == "" and list(tmp_path.glob("*.onnx")) == [tmp_path / "textbook.onnx"]


def test_batch_in_a_real_subprocess(tmp_path):
    inputs, out = batch_inputs(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "bnfold", *map(str, inputs), "-o", str(out), "-j", "2"], capture_output=True, text=True
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert (out / "a.onnx").exists()


# --- progress -----------------------------------------------------------------------------------


def test_progress_draws_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr("bnfold.cli.progress.DELAY_SECONDS", 0.0)
    terminal, pipe = FakeTerminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = TerminalProgress(stream)
        progress("folding", 10, 5000)
        progress("folding", 5000, 5000)
        progress.close()
    assert "bnfold: folding 5000/5000" in terminal.getvalue() and terminal.getvalue().endswith("\r\033[K")
    assert pipe.getvalue() == ""


def test_progress_shows_a_long_step_while_it_runs():
    clock = FakeClock()
    terminal = FakeTerminal()
    progress = TerminalProgress(terminal, clock=clock, background=False)
    progress("loading", 0, 1)
    progress.tick()
    assert terminal.getvalue() == ""  # within the first half second nothing is drawn
    clock.now += 1.0  # the library is busy loading: no further call comes, the timer redraws
    progress.tick()
    assert "bnfold: loading 1.0 s" in terminal.getvalue()
    progress.close()


def test_a_quick_run_draws_nothing():
    terminal = FakeTerminal()
    progress = TerminalProgress(terminal)
    progress("loading", 0, 1)
    progress.close()
    assert terminal.getvalue() == ""


def test_fold_file_reports_its_steps():
    steps = []
    bnfold.fold_file(SAMPLE, None, dry_run=True, progress=lambda step, done, total: steps.append((step, done, total)))
    assert steps[0] == ("loading", 0, 1) and ("folding", 6, 8) in steps and ("folding", 8, 8) in steps


def test_cli_prints_no_progress_when_not_on_a_terminal(tmp_path):
    result = invoke(SAMPLE, tmp_path / "o.onnx")
    assert "\r" not in result.stderr


# --- interop ------------------------------------------------------------------------------------


def test_the_pass_runs_in_an_onnx_ir_pass_manager():
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    model = ir.serde.deserialize_model(onnx.load(SAMPLE))
    manager = ir.passes.PassManager([bnfold.BatchNormFoldPass(), RemoveUnusedNodesPass()])
    result = manager(model)
    assert result.modified
    folded = ir.serde.serialize_model(result.model)
    assert_sample_folded(folded)
    assert_same_outputs(onnx.load(SAMPLE), folded)


def test_graphsurgeon_graph_in_graphsurgeon_graph_out():
    gs = pytest.importorskip("onnx_graphsurgeon")
    graph = gs.import_onnx(onnx.load(SAMPLE))
    result = bnfold.fold(graph)
    assert isinstance(result.model, gs.Graph)
    assert [node.name for node in result.model.nodes if node.op == "BatchNormalization"] == ["input_norm", "bn3"]
    assert_same_outputs(onnx.load(SAMPLE), gs.export_onnx(result.model))
    assert [r.action for r in result.records].count("folded") == 6


def test_version_and_help_list_the_features():
    assert invoke("--version").stdout.startswith("bnfold ")
    help_text = invoke("--help").stdout
    for option in (
        "--explain",
        "--dry-run",
        "--json",
        "--output-dir",
        "--jobs",
        "--quiet",
        "--report",
        "--install-completion",
        "--version",
    ):
        assert option in help_text
