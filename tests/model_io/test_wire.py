"""Reading a model by reference: its large inline tensors are neither parsed nor copied, and nothing changes."""

import numpy as np
import onnx
import pytest
from conftest import SAMPLE
from helpers import assert_same_outputs, bn_arrays, bn_node, make_model, random_feeds, run
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.model_io import validation, wire_format


@pytest.fixture
def by_reference(monkeypatch):
    """Read every model by reference, every tensor of 16 bytes or more as a reference."""
    monkeypatch.setattr(validation, "_STRIP_FILE_BYTES", 0)
    monkeypatch.setattr(wire_format, "LARGE_TENSOR_BYTES", 16)


def test_stripped_model_equals_the_parsed_one_but_for_the_data(tmp_path, by_reference):
    source = tmp_path / "in.onnx"
    onnx.save(onnx.load(SAMPLE), source)
    parsed = onnx.load(source)
    stripped, count = wire_format.strip_large_tensors(source)
    assert count == sum(len(t.raw_data) >= 16 for t in parsed.graph.initializer) > 0
    for full, reference in zip(parsed.graph.initializer, stripped.graph.initializer, strict=True):
        if reference.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in reference.external_data}
            assert info["location"] == "in.onnx"
            data = source.read_bytes()[int(info["offset"]) : int(info["offset"]) + int(info["length"])]
            assert data == full.raw_data
            full.ClearField("raw_data")
            reference.ClearField("external_data")
            reference.ClearField("data_location")
        assert full == reference
    assert parsed.graph.node == stripped.graph.node and parsed.opset_import == stripped.opset_import


def test_folding_by_reference_writes_the_same_bytes(tmp_path, monkeypatch):
    source = tmp_path / "in.onnx"
    onnx.save(onnx.load(SAMPLE), source)
    whole = tmp_path / "whole.onnx"
    bnfold.fold_file(source, whole)
    monkeypatch.setattr(validation, "_STRIP_FILE_BYTES", 0)
    monkeypatch.setattr(wire_format, "LARGE_TENSOR_BYTES", 16)
    referenced = tmp_path / "referenced.onnx"
    report = bnfold.fold_file(source, referenced)
    assert report.check.passed
    assert referenced.read_bytes() == whole.read_bytes()  # inline stays inline, byte for byte


def test_a_model_written_in_chunks_reads_back_by_reference(tmp_path, by_reference):
    """bnfold writes each initializer in its own `graph` chunk; protobuf merges them, and so does wire_format.py."""
    once = tmp_path / "once.onnx"
    bnfold.fold_file(SAMPLE, once, check=False)
    stripped, count = wire_format.strip_large_tensors(once)
    assert count > 0 and len(stripped.graph.initializer) == len(onnx.load(once).graph.initializer)
    twice = tmp_path / "twice.onnx"
    bnfold.fold_file(once, twice, check=False)
    assert_same_outputs(onnx.load(once), onnx.load(twice))


def test_an_external_data_output_of_an_inline_input_copies_the_tensors_from_the_model_file(tmp_path, by_reference):
    out = tmp_path / "ext.onnx"
    report = bnfold.fold_file(SAMPLE, out, external_data="always")
    assert report.check.passed
    locations = {
        e.value
        for t in onnx.load(out, load_external_data=False).graph.initializer
        for e in t.external_data
        if e.key == "location"
    }
    assert locations and all(location != SAMPLE.name for location in locations)  # never the input's file
    feeds = random_feeds(onnx.load(SAMPLE))
    np.testing.assert_allclose(run(onnx.load(out), feeds)[0], run(onnx.load(SAMPLE), feeds)[0], rtol=1e-5, atol=1e-6)


def test_a_file_the_reader_does_not_follow_falls_back_to_onnx(tmp_path, by_reference):
    source = tmp_path / "broken.onnx"
    source.write_bytes(SAMPLE.read_bytes()[:-7])  # truncated inside a tensor
    with pytest.raises(bnfold.InputError, match="not an ONNX model"):
        bnfold.fold_file(source, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_typed_fields_and_strings_stay_inline(tmp_path, by_reference):
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], rng.normal(size=12).tolist())  # float_data
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn_node("c", "z")]
    model = make_model(nodes, [("x", np.float32, ["N", 3, 4, 4])], [("z", np.float32, None)], bn_arrays(rng, 4))
    model.graph.initializer.append(weight)
    model.graph.initializer.append(numpy_helper.from_array(np.array(["a", "b"], dtype=object), "labels"))
    source = tmp_path / "typed.onnx"
    onnx.save(model, source)
    stripped, _ = wire_format.strip_large_tensors(source)
    by_name = {t.name: t for t in stripped.graph.initializer}
    assert list(by_name["w"].float_data) == list(weight.float_data) and by_name["labels"].string_data
    report = bnfold.fold_file(source, tmp_path / "out.onnx")
    assert report.check.passed and report.records[0].action == "folded"
