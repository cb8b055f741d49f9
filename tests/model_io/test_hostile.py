"""Hostile and broken input: exit 2, one clear line, no traceback, nothing written, input untouched."""

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders.external import external_model
from conftest import SAMPLE, invoke, refuse
from onnx import TensorProto, helper, numpy_helper

from bnfold.model_io import writer


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def tiny_model(**graph_changes) -> onnx.ModelProto:
    nodes = graph_changes.pop("nodes", [helper.make_node("Relu", ["x"], ["y"], name="relu")])
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        graph_changes.pop("initializer", []),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", graph_changes.pop("opset", 17))])


# --- the file itself -------------------------------------------------------------------------


def test_missing_path(tmp_path):
    refuse(tmp_path, tmp_path / "nope.onnx", "no such file")


def test_a_directory(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    refuse(tmp_path, tmp_path / "dir.onnx", "is a directory")


def test_an_empty_file(tmp_path):
    refuse(tmp_path, write(tmp_path, "empty.onnx", b""), "empty file, not an ONNX model")


def test_random_bytes(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    refuse(tmp_path, write(tmp_path, "random.onnx", data), "not an ONNX model")


def test_a_truncated_model(tmp_path):
    data = SAMPLE.read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 100):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        refuse(folder, write(folder, "cut.onnx", data[:cut]), "")


def test_a_text_file(tmp_path):
    refuse(
        tmp_path,
        write(tmp_path, "notes.onnx", b"these are not the weights you are looking for\n" * 20),
        "not an ONNX model",
    )


def test_a_model_without_a_graph(tmp_path):
    model = onnx.ModelProto(ir_version=8, opset_import=[helper.make_opsetid("", 17)])
    refuse(tmp_path, write(tmp_path, "nograph.onnx", model.SerializeToString()), "not an ONNX model (no graph)")


def test_an_unknown_default_opset(tmp_path):
    model = tiny_model(opset=999)
    refuse(tmp_path, write(tmp_path, "opset.onnx", model.SerializeToString()), "unknown default-domain opset 999")


def test_a_graph_with_a_cycle(tmp_path):
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
        helper.make_node("Identity", ["b"], ["y"], name="out"),
    ]
    refuse(
        tmp_path, write(tmp_path, "cycle.onnx", tiny_model(nodes=nodes).SerializeToString()), "the graph has a cycle"
    )


def test_a_node_input_defined_nowhere(tmp_path):
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")]
    refuse(
        tmp_path,
        write(tmp_path, "ghost.onnx", tiny_model(nodes=nodes).SerializeToString()),
        "input 'ghost' of node 'add' is not defined anywhere",
    )


def test_an_initializer_claiming_more_raw_data_than_it_has(tmp_path):
    tensor = numpy_helper.from_array(np.ones(4, np.float32), "w")
    del tensor.dims[:]
    tensor.dims.extend([1_000_000_000])
    model = tiny_model(nodes=[helper.make_node("Add", ["x", "w"], ["y"])], initializer=[tensor])
    refuse(
        tmp_path,
        write(tmp_path, "liar.onnx", model.SerializeToString()),
        "tensor 'w' claims 4000000000 bytes but holds 16",
    )


def test_an_initializer_claiming_more_typed_values_than_it_has(tmp_path):
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1_000_000], float_data=[1.0, 2.0])
    model = tiny_model(nodes=[helper.make_node("Add", ["x", "w"], ["y"])], initializer=[tensor])
    refuse(
        tmp_path,
        write(tmp_path, "liar.onnx", model.SerializeToString()),
        "tensor 'w' claims 1000000 elements but holds 2 values",
    )


# --- external data -----------------------------------------------------------------------------


def test_external_data_at_an_absolute_location(tmp_path):
    source = external_model(tmp_path / "m", str(tmp_path / "m" / "weights.bin"))
    refuse(tmp_path, source, "absolute location")


def test_external_data_through_dot_dot(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 100_000)
    source = external_model(tmp_path / "m", "../secret.bin")
    refuse(tmp_path, source, "leaves the model's folder")


def test_external_data_through_a_symlink_out_of_the_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(b"\x00" * 100_000)
    source = external_model(tmp_path / "m", "link.bin")
    (tmp_path / "m" / "link.bin").symlink_to(outside / "weights.bin")
    refuse(tmp_path, source, "leads outside the model's folder")


def test_external_data_file_with_a_second_hard_link(tmp_path):
    source = external_model(tmp_path / "m", "weights.bin")
    os.link(tmp_path / "m" / "weights.bin", tmp_path / "elsewhere.bin")
    refuse(tmp_path, source, "file 'weights.bin' has 2 hard links, so it could be any file on the disk; fold a copy")


def test_external_data_file_missing(tmp_path):
    source = external_model(tmp_path / "m", "gone.bin")
    refuse(tmp_path, source, "file 'gone.bin' does not exist")


def test_external_data_past_the_end_of_the_file(tmp_path):
    source = external_model(tmp_path / "m", "weights.bin", offset=10**9, length=16)
    refuse(tmp_path, source, "lie past the end of 'weights.bin'")


def test_external_data_shorter_than_the_tensor(tmp_path):
    source = external_model(tmp_path / "m", "weights.bin", length=4)
    refuse(tmp_path, source, "length 4 is less than the")


# --- the output path ---------------------------------------------------------------------------


def test_output_folder_under_a_file(tmp_path):
    source = tmp_path / "in.onnx"
    shutil.copy(SAMPLE, source)
    refuse(tmp_path, source, "cannot be created: ", out=tmp_path / "in.onnx" / "deeper" / "out.onnx")


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
def test_out_naming_the_input_in_any_spelling_is_refused(tmp_path, monkeypatch, spelling):
    """bnfold never writes over its input: not through ./, a symlink to it, or a second hard link."""
    source = tmp_path / "in.onnx"
    shutil.copy(SAMPLE, source)
    monkeypatch.chdir(tmp_path)
    out = {
        "same": source,
        "dot": Path("./in.onnx"),
        "symlink": tmp_path / "alias.onnx",
        "hardlink": tmp_path / "hard.onnx",
    }[spelling]
    if spelling == "symlink":
        out.symlink_to(source)
    elif spelling == "hardlink":
        os.link(source, out)
    refuse(tmp_path, source, "one of the input's files; bnfold never writes over its input", out=out)
    assert source.read_bytes() == SAMPLE.read_bytes()


def test_out_is_an_existing_symlink_elsewhere(tmp_path):
    source = tmp_path / "in.onnx"
    shutil.copy(SAMPLE, source)
    target = tmp_path / "precious.txt"
    target.write_text("do not overwrite")
    out = tmp_path / "out.onnx"
    out.symlink_to(target)
    assert invoke(source, out).exit_code == 0
    assert target.read_text() == "do not overwrite" and not out.is_symlink()


def test_a_failing_write_leaves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "in.onnx"
    shutil.copy(SAMPLE, source)
    real_write = writer.write_inline

    def full_disk(model, path, *args):
        real_write(model, path, *args)
        with open(path, "r+b") as handle:  # a partial file, then the disk is full
            handle.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "write_inline", full_disk)
    refuse(tmp_path, source, "cannot write it (No space left on device)")
