"""The command line: exit codes, messages, the report, and never a partial or wrong output."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import SAMPLE, assert_refused, invoke
from helpers import assert_same_outputs, op_counts

from bnfold.folding import fold_math


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "in.onnx"
    shutil.copy(SAMPLE, path)
    return path


def test_fold_writes_a_checked_model_and_report(sample, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = invoke(sample, out, "--report", report)
    assert result.exit_code == 0, result.output
    # bn3 (nothing to fold into) and input_norm (before a zero-padding Conv) are kept, each one node
    assert op_counts(onnx.load(out))["BatchNormalization"] == 2
    data = json.loads(report.read_text())
    assert {r["action"] for r in data["nodes"]} == {"folded", "kept"}
    for record in data["nodes"]:
        assert set(record) >= {"name", "action", "into", "reason"}
    assert data["check"]["passed"] is True
    assert {o["name"] for o in data["check"]["outputs"]} == {"logits"}
    assert set(data["check"]["outputs"][0]) >= {"name", "max_abs_err", "max_rel_err"}
    assert "check: passed" in result.stderr and "8 BatchNormalization" in result.stderr


def test_dry_run_writes_nothing(sample, tmp_path):
    before = sorted(os.listdir(tmp_path))
    result = invoke(sample, "--dry-run")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == before
    lines = result.stdout.splitlines()
    assert any(
        re.match(r"bn3 +BatchNormalization +kept +BatchNormalization +output of Conv 'pw' has 2 consumers", line)
        for line in lines
    ), result.stdout
    assert not any(line.startswith("bn1 ") for line in lines)  # folded BNs are listed with --all only
    assert "8 BatchNormalization: 6 folded, 2 kept, 0 converted, 0 skipped (planned)" in lines
    assert "diagnostics: ε dominates σ² in 0 channels" in result.stdout


def test_dry_run_with_output_still_writes_no_model(sample, tmp_path):
    result = invoke(sample, tmp_path / "out.onnx", "--dry-run", "--report", tmp_path / "r.json")
    assert result.exit_code == 0
    assert not (tmp_path / "out.onnx").exists()
    assert json.loads((tmp_path / "r.json").read_text())["check"] is None


def test_no_check_skips_verification(sample, tmp_path):
    result = invoke(sample, tmp_path / "out.onnx", "--no-check", "--report", tmp_path / "r.json")
    assert result.exit_code == 0
    assert json.loads((tmp_path / "r.json").read_text())["check"] is None
    assert "check: not run" in result.stderr


def _spoil_conv_folds(monkeypatch):
    original = fold_math.fold_output_channels

    def wrong(weight, bias, scale, shift, **kwargs):
        new_weight, new_bias = original(weight, bias, scale, shift, **kwargs)
        return new_weight, new_bias + 0.5

    monkeypatch.setattr(fold_math, "fold_output_channels", wrong)


def test_wrong_folds_are_backed_out_and_the_rest_written(sample, tmp_path, monkeypatch):
    _spoil_conv_folds(monkeypatch)
    before = sample.read_bytes()
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = invoke(sample, out, "--report", report)
    assert result.exit_code == 0, result.output
    assert sample.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bnfold")] == []  # no staged round left
    warnings = [line for line in result.stderr.splitlines() if line.startswith("bnfold: warning:")]
    assert len(warnings) == 1 and "failed the check and were backed out" in warnings[0], result.stderr
    data = json.loads(report.read_text())
    assert data["check"] is None or data["check"]["verdict"] in ("passed", "inconclusive")
    assert "bn1" in data["backed_out"]
    bn1 = next(record for record in data["nodes"] if record["name"] == "bn1")
    assert bn1["action"] == "skipped" and bn1["reason"].startswith("fails the check at 'bn1' (max abs err ")
    assert "the original's own noise" in bn1["reason"]
    assert_same_outputs(onnx.load(sample), onnx.load(out))  # what was written computes what the input does


def test_a_wrong_fold_fails_the_check_and_writes_nothing_under_strict(sample, tmp_path, monkeypatch):
    _spoil_conv_folds(monkeypatch)
    before = sample.read_bytes()
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = invoke(sample, out, "--report", report, "--strict")
    # The first value that diverges is conv1's output, where bn1 folded (and input_norm's scale went forward).
    assert_refused(result, "check failed at BatchNormalization bn1, site 'bn1' channel", code=1)
    assert not out.exists()
    assert sample.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bnfold")] == []
    data = json.loads(report.read_text())
    assert (data["check"]["verdict"], data["check"]["passed"]) == ("failed", False)
    assert data["check"]["outputs"][0]["name"] == "logits" and data["check"]["outputs"][0]["max_rel_err"] > 1e-3
    first = data["check"]["sites"][0]
    assert (first["name"], first["bn"], first["passed"], first["informative"]) == (
        "bn1",
        "bn1",
        False,
        True,
    )
    assert next(n for n in data["nodes"] if n["name"] == "bn1")["site"] == "bn1"


def test_output_required_without_dryinvoke(sample):
    assert_refused(invoke(sample), "give IN OUT (or IN --dry-run, or IN... -o DIR for many models)", code=2)


def test_shape_option_sets_the_check_inputs(sample, tmp_path):
    result = invoke(sample, tmp_path / "o.onnx", "--shape", "image=5x3x16x16", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["check"]["inputs"] == {"image": [5, 3, 16, 16]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("image=axb", "--shape 'image=axb' is not NAME:1,3,224,224 or NAME=1x3x224x224"),
        ("nosuch=1x3x16x16", "--shape: the model has no input 'nosuch' (its inputs: 'image' (float32, ?x3x16x16))"),
        ("image=1x3x16", "--shape: 1x3x16 for input 'image' (float32, ?x3x16x16), which has rank 4"),
        ("image=1x3x32x32", "--shape: 1x3x32x32 for input 'image' (float32, ?x3x16x16), whose axis 2 is fixed at 16"),
    ],
)
def test_bad_shape_option(sample, tmp_path, spec, message):
    assert_refused(invoke(sample, tmp_path / "o.onnx", "--shape", spec), message, code=2)
    assert not (tmp_path / "o.onnx").exists()


def test_inputs_npz_feeds_the_check(sample, tmp_path):
    npz = tmp_path / "x.npz"
    np.savez(npz, image=np.ones((4, 3, 16, 16), np.float32))
    result = invoke(sample, tmp_path / "o.onnx", "--inputs", npz, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["check"]["inputs"] == {"image": [4, 3, 16, 16]}


def test_model_onnxruntime_cannotinvoke(tmp_path):
    rng = np.random.default_rng(0)
    params = {name: rng.uniform(0.5, 1.5, 2).astype(np.float32) for name in ("s", "b", "m", "v")}
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w"], ["c"]),
        onnx.helper.make_node("BatchNormalization", ["c", *params], ["n"]),
        onnx.helper.make_node("Mystery", ["n"], ["y"], domain="com.example"),
    ]
    inits = [
        onnx.numpy_helper.from_array(v, k)
        for k, v in {**params, "w": rng.normal(size=(2, 1, 1, 1)).astype(np.float32)}.items()
    ]
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            nodes,
            "g",
            [onnx.helper.make_tensor_value_info("x", 1, [1, 1, 2, 2])],
            [onnx.helper.make_tensor_value_info("y", 1, [1, 2, 2, 2])],
            inits,
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.example", 1)],
    )
    source = tmp_path / "custom.onnx"
    onnx.save(model, source)
    result = invoke(source, tmp_path / "out.onnx")
    assert_refused(result, "onnxruntime cannot run the original model", code=2)
    assert "--no-check" in result.stderr
    assert not (tmp_path / "out.onnx").exists()
    assert invoke(source, tmp_path / "out.onnx", "--no-check").exit_code == 0


def test_debug_shows_the_traceback(tmp_path):
    result = invoke(tmp_path / "missing.onnx", tmp_path / "o.onnx", "--debug")
    assert result.exit_code == 2 and "Traceback" in result.stderr


def test_unknown_option_is_a_usage_error(sample):
    assert invoke(sample, "--frobnicate").exit_code == 2


def test_same_file_in_and_out_is_refused(sample):
    before = sample.read_bytes()
    assert_refused(invoke(sample, sample), "one of the input's files; bnfold never writes over its input", code=2)
    assert sample.read_bytes() == before


def test_real_subprocess_entry_points(sample, tmp_path):
    out = tmp_path / "out.onnx"
    run = subprocess.run([sys.executable, "-m", "bnfold", str(sample), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.exists() and "check: passed" in run.stderr
    version = subprocess.run([sys.executable, "-m", "bnfold", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("bnfold ")
    missing = subprocess.run(
        [sys.executable, "-m", "bnfold", str(tmp_path / "nope.onnx"), str(out)], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().startswith("bnfold: error:")
