"""Nothing lost: no flag, signal, race or hostile file makes bnfold clobber, corrupt or leave behind a file.

Refusals are checked with the full contract: exit 2, one line naming the problem, nothing written,
nothing changed (including no staging folder left behind).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders.external import external_sample
from conftest import ROOT, SAMPLE, assert_refused, invoke, snapshot
from helpers import assert_same_outputs, bn_node, data_file, make_model, random_feeds, run
from onnx import helper, numpy_helper

import bnfold

# --- 6. refused before anything is written --------------------------------------------------------


@pytest.mark.parametrize("which", ["input", "output", "input data", "output data"])
def test_the_report_may_not_be_any_model_file(tmp_path, which):
    source = external_sample(tmp_path / "in")
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    bnfold.fold_file(source, out)  # an existing output, with its data file
    report = {
        "input": source,
        "output": out,
        "input data": source.parent / "model.onnx.weights",
        "output data": data_file(out),
    }[which]
    before = snapshot(tmp_path)
    assert_refused(
        invoke(source, out, "--report", report), "give the report its own path", folder=tmp_path, before=before
    )


@pytest.mark.parametrize("report", ["in.onnx/r.json", "a_folder"])
def test_an_unwritable_report_is_refused_before_folding(tmp_path, report):
    source = tmp_path / "in.onnx"
    shutil.copy(SAMPLE, source)
    (tmp_path / "a_folder").mkdir()
    before = snapshot(tmp_path)
    result = invoke(source, tmp_path / "out.onnx", "--report", tmp_path / report)
    assert_refused(result, "--report", folder=tmp_path, before=before)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("report", ["/proc/bnfold-report.json", "/proc/no/such/folder/r.json"])
def test_a_report_folder_that_takes_no_file_is_refused_before_folding(tmp_path, report):
    """Permission bits say /proc is writable for root; only creating a file there tells the truth."""
    source = tmp_path / "in.onnx"
    shutil.copy(SAMPLE, source)
    before = snapshot(tmp_path)
    result = invoke(source, tmp_path / "out.onnx", "--report", report)
    assert_refused(result, f"--report {report}: cannot be written in '/proc'", folder=tmp_path, before=before)
    assert "internal error" not in result.stderr


def test_the_report_is_written_atomically_and_keeps_its_permissions(tmp_path):
    report = tmp_path / "r.json"
    report.write_text("old")
    os.chmod(report, 0o640)
    assert invoke(SAMPLE, tmp_path / "out.onnx", "--report", report).exit_code == 0
    assert json.loads(report.read_text())["check"]["verdict"] == "passed"
    assert report.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.json")] == []


def test_an_input_named_like_a_data_file_is_never_overwritten(tmp_path):
    """`bnfold out.onnx.data out.onnx`: the output's data file has a name of its own."""
    source = tmp_path / "out.onnx.data"
    shutil.copy(SAMPLE, source)
    out = tmp_path / "out.onnx"
    assert invoke(source, out, "--external-data", "always").exit_code == 0
    assert source.read_bytes() == SAMPLE.read_bytes()
    assert data_file(out) != source
    assert_same_outputs(onnx.load(SAMPLE), onnx.load(out))


def test_in_batch_mode_no_output_may_be_an_input(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "a.onnx")
    before = snapshot(tmp_path)
    result = invoke(folder / "a.onnx", "-o", folder)
    assert_refused(result, "bnfold never writes over its input", folder=tmp_path, before=before)


# --- 7. the external-data pair is written as a unit ------------------------------------------------

KILLER = textwrap.dedent("""
    import os, sys
    calls, last = [], int(sys.argv[3])
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == last:
            os._exit(9)  # as SIGKILL: no cleanup of any kind
    os.replace = replace
    sys.argv = ["bnfold", sys.argv[1], sys.argv[2], "--no-check", "--quiet"]
    from bnfold.cli.app import main
    main()
""")


@pytest.mark.parametrize("killed_after", [1, 2], ids=["after the data file", "after the model file"])
def test_a_run_killed_between_the_renames_leaves_a_model_with_its_own_data(tmp_path, killed_after):
    first = external_sample(tmp_path / "first")
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    bnfold.fold_file(first, out)
    old = onnx.load(out)
    second_model = onnx.load(SAMPLE)
    for tensor in second_model.graph.initializer:  # another model: other weights, same graph
        if tensor.name.endswith(".scale"):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 2, tensor.name))
    second = tmp_path / "second" / "model.onnx"
    second.parent.mkdir()
    onnx.save(
        onnx.ModelProto.FromString(second_model.SerializeToString()),
        second,
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )  # a copy: saving converts the model given
    process = subprocess.run([sys.executable, "-c", KILLER, str(second), str(out), str(killed_after)])
    assert process.returncode == 9
    reloaded = onnx.load(out)  # whatever the moment: the model loads with the data it was written with
    expected = old if killed_after == 1 else bnfold.fold(second_model).model
    feeds = random_feeds(expected)
    np.testing.assert_allclose(run(reloaded, feeds)[0], run(expected, feeds)[0], rtol=1e-5, atol=1e-6)
    bnfold.fold_file(first, out)  # the next run in the folder removes what the killed one left
    leftovers = [p.name for p in out.parent.iterdir() if p.name != "model.onnx"]
    assert leftovers == [data_file(out).name]


RACER = textwrap.dedent("""
    import sys, bnfold
    for _ in range(int(sys.argv[3])):
        bnfold.fold_file(sys.argv[1], sys.argv[2], check=False)
""")


def test_two_runs_racing_on_one_output_never_mix_their_files(tmp_path):
    first = external_sample(tmp_path / "a")
    model_b = onnx.load(SAMPLE)
    model_b.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(
            numpy_helper.to_array(model_b.graph.initializer[0]) * -1, model_b.graph.initializer[0].name
        )
    )
    second = tmp_path / "b" / "model.onnx"
    second.parent.mkdir()
    onnx.save(
        onnx.ModelProto.FromString(model_b.SerializeToString()),
        second,
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )  # a copy: saving converts the model given
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(source), str(out), "6"]) for source in (first, second)]
    feeds = random_feeds(onnx.load(SAMPLE))
    candidates = [run(onnx.load(SAMPLE), feeds)[0], run(model_b, feeds)[0]]
    seen = 0
    while any(r.poll() is None for r in racers):
        try:
            got = run(onnx.load(out), feeds)[0]
        except Exception:  # noqa: BLE001 - not written yet: fine; a wrong pairing would load
            continue
        assert any(np.allclose(got, c, rtol=1e-4, atol=1e-5) for c in candidates)
        seen += 1
    assert all(r.returncode == 0 for r in racers)
    assert len([p for p in out.parent.iterdir()]) == 2  # the model and its one data file: nothing left over


# --- 8. signals, stale stages, permissions, odd paths, a full disk ----------------------------------

SLOW = textwrap.dedent("""
    import sys, time
    from bnfold.folding import fold_math
    real = fold_math.scaled
    def slow(*args, **kwargs):
        print("folding", flush=True)
        time.sleep(30)
        return real(*args, **kwargs)
    fold_math.scaled = slow
    sys.argv = ["bnfold", sys.argv[1], sys.argv[2]]
    from bnfold.cli.app import main
    main()
""")


@pytest.mark.parametrize(
    ("signum", "code", "message"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_a_signal_removes_what_was_staged_and_says_so(tmp_path, signum, code, message):
    out = tmp_path / "out.onnx"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW, str(SAMPLE), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "folding\n"
    time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == code
    assert stderr.strip().splitlines() == [f"bnfold: error: {message}; nothing was written"]
    assert list(tmp_path.iterdir()) == []


def test_stale_stages_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead, live = tmp_path / ".bnfold-999999999-x", tmp_path / f".bnfold-{sleeper.pid}-y"
        for stage in (dead, live):
            stage.mkdir()
            (stage / "partial.onnx").write_bytes(b"half")
        assert invoke(SAMPLE, tmp_path / "out.onnx").exit_code == 0
        assert not dead.exists() and live.exists()
    finally:
        sleeper.kill()


def test_replacing_an_output_keeps_its_permission_bits(tmp_path):
    out = tmp_path / "out.onnx"
    bnfold.fold_file(external_sample(tmp_path / "in"), out)
    os.chmod(out, 0o640)
    bnfold.fold_file(external_sample(tmp_path / "in2"), out)
    assert out.stat().st_mode & 0o777 == 0o640 and data_file(out).stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_output_is_refused(tmp_path):
    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    before = snapshot(tmp_path)
    assert_refused(invoke(SAMPLE, fifo), "is not a regular file", folder=tmp_path, before=before)


def test_a_full_disk_says_no_space_left_on_device(tmp_path, monkeypatch):
    from bnfold.model_io import writer

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "write_external", full)
    source = external_sample(tmp_path / "in")
    before = snapshot(tmp_path)
    assert_refused(invoke(source, tmp_path / "out.onnx"), "No space left on device", folder=tmp_path, before=before)


# --- 9. bounded on hostile files ------------------------------------------------------------------


def hostile_bn(tmp_path, name, patch=None, scale_from=None, params=4):
    rng = np.random.default_rng(0)
    inits = {k: rng.uniform(0.5, 1.5, params).astype(np.float32) for k in ("bn.bias", "bn.mean", "bn.var")}
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), bn_node("r", "y")]
    if scale_from is None:
        inits["bn.scale"] = np.ones(4, np.float32)
    else:
        nodes.insert(0, scale_from)
    model = make_model(nodes, [("x", np.float32, ["N", 4, 2, 2])], [("y", np.float32, ["N", 4, 2, 2])], inits)
    if patch:
        patch(model)
    path = tmp_path / name
    path.write_bytes(
        model.SerializeToString().replace(b"relu", b"re\xffu") if name == "utf8.onnx" else model.SerializeToString()
    )
    return path


def constant_of_2_31(model):
    model.graph.initializer.append(numpy_helper.from_array(np.array([2**31], np.int64), "huge"))


def data_type_0(model):
    model.graph.initializer[0].data_type = 0


def elem_type_0(model):
    model.graph.output[0].type.tensor_type.elem_type = 0


@pytest.mark.parametrize(
    ("name", "patch", "message"),
    [
        ("cos.onnx", constant_of_2_31, "would compute a constant 'bn.scale' of 2,147,483,648 elements (8.0 GiB)"),
        ("dtype0.onnx", data_type_0, "has no element type (data_type 0)"),
        ("elem0.onnx", elem_type_0, "graph input or output 'y' has no element type (elem_type 0)"),
        ("utf8.onnx", None, "a node's text b're\\xffu' is not valid UTF-8"),
    ],
)
def test_hostile_files_are_exit_2_with_memory_bounded(tmp_path, name, patch, message):
    scale = helper.make_node(
        "ConstantOfShape",
        ["huge"],
        ["bn.scale"],
        name="ConstantOfShape",
        value=numpy_helper.from_array(np.array([1.0], np.float32)),
    )
    source = hostile_bn(tmp_path, name, patch, scale_from=scale if name == "cos.onnx" else None)
    for options in ([], ["--no-check"], ["--dry-run"]):
        before = snapshot(tmp_path)
        assert_refused(
            invoke(source, *([] if "--dry-run" in options else [tmp_path / "o.onnx"]), *options),
            message,
            folder=tmp_path,
            before=before,
        )


def test_over_long_path_components_are_exit_2(tmp_path):
    long_name = "x" * 300 + ".onnx"
    before = snapshot(tmp_path)
    assert_refused(
        invoke(tmp_path / long_name, tmp_path / "o.onnx"), "File name too long", folder=tmp_path, before=before
    )
    assert_refused(invoke(SAMPLE, tmp_path / long_name), "File name too long", folder=tmp_path, before=before)


@pytest.mark.parametrize("mode", ["--dry-run", "--explain"])
def test_mismatched_parameter_shapes_are_refused_not_crashed_on(tmp_path, mode):
    source = hostile_bn(tmp_path, "mismatch.onnx", params=5)
    result = invoke(source, *(["--explain", "bn"] if mode == "--explain" else [mode]))
    assert result.exit_code == 2, result.output
    assert "BatchNormalization 'bn' is malformed: its parameters' shapes differ" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- 10. the batch and the API --------------------------------------------------------------------


def test_a_batch_worker_that_dies_is_that_models_failure_only(tmp_path, monkeypatch):
    import bnfold.api

    real = bnfold.api.fold_file

    def fold_or_die(source, *args, **kwargs):
        if Path(source).name == "die.onnx":
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return real(source, *args, **kwargs)

    monkeypatch.setattr(bnfold.api, "fold_file", fold_or_die)
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a.onnx", "die.onnx", "z.onnx"):
        shutil.copy(SAMPLE, models / name)
    out = tmp_path / "out"
    out.mkdir()
    result = invoke(models, "-o", out, "--jobs", "2", "--report", tmp_path / "r.json")
    assert result.exit_code == 2
    report = json.loads((tmp_path / "r.json").read_text())
    outcome = {Path(m["model"]).name: (m["exit_code"], m["error"]) for m in report["models"]}
    assert outcome == {"a.onnx": (0, None), "die.onnx": (2, "worker died: signal 9"), "z.onnx": (0, None)}
    assert (out / "a.onnx").exists() and (out / "z.onnx").exists() and not (out / "die.onnx").exists()
    assert "worker died: signal 9" in result.stderr


def test_fold_of_a_proto_with_external_data_needs_its_folder(tmp_path, monkeypatch):
    source = external_sample(tmp_path / "in")
    proto = onnx.load(source, load_external_data=False)
    monkeypatch.chdir(tmp_path)  # the data is not relative to here: it must not be read from here
    with pytest.raises(bnfold.InputError, match="pass base_dir="):
        bnfold.fold(proto)
    folded = bnfold.fold(proto, base_dir=source.parent)
    assert [r.action for r in folded.records].count("folded") == 6
    hostile = onnx.load(source, load_external_data=False)
    for tensor in hostile.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    with pytest.raises(bnfold.InputError, match="leaves the model's folder"):
        bnfold.fold(hostile, base_dir=source.parent)


def test_the_whole_cli_in_a_subprocess_leaves_no_staging_folder(tmp_path):
    out = tmp_path / "out.onnx"
    process = subprocess.run(
        [sys.executable, "-m", "bnfold", str(SAMPLE), str(out)], capture_output=True, text=True, cwd=ROOT
    )
    assert process.returncode == 0, process.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]
