"""The sample models, the Python API, external data and the check itself."""

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import MODELS
from helpers import assert_never_costlier, assert_same_outputs, assert_sample_folded, data_file, random_feeds, run

import bnfold
from bnfold.check.comparison import Tolerance
from bnfold.check.comparison import compare_value as compare_output

SAMPLES = [MODELS / "sample_cnn.onnx"]


def test_there_are_sample_models():
    assert sorted(p.name for p in MODELS.glob("*.onnx")) == ["sample_cnn.onnx", "textbook_bn.onnx"]
    assert sum(p.stat().st_size for p in MODELS.iterdir()) < 4 * 2**20


def test_the_textbook_bn_has_nothing_to_fold_into_and_is_written_as_it_is(tmp_path):
    out = tmp_path / "out.onnx"
    report = bnfold.fold_file(MODELS / "textbook_bn.onnx", out)
    assert report.unchanged and report.check is None
    assert [(r.name, r.action) for r in report.records] == [("bn", "kept")]
    assert onnx.load(out).graph.SerializeToString() == onnx.load(MODELS / "textbook_bn.onnx").graph.SerializeToString()


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_model_folds_with_no_bn_left(path, tmp_path):
    out = tmp_path / "out.onnx"
    report = bnfold.fold_file(path, out)
    assert report.check.passed
    folded = onnx.load(out)
    onnx.checker.check_model(folded, full_check=True)
    assert_sample_folded(folded)
    assert_same_outputs(onnx.load(path), folded)
    assert_never_costlier(onnx.load(path), folded)
    assert all(o.max_rel_err <= 1e-5 for o in report.check.outputs)


def test_fold_accepts_proto_ir_model_and_path_without_changing_them():
    proto = onnx.load(SAMPLES[0])
    before = proto.SerializeToString()
    from_proto = bnfold.fold(proto)
    assert isinstance(from_proto.model, onnx.ModelProto)
    assert proto.SerializeToString() == before

    ir_model = ir.serde.deserialize_model(proto)
    from_ir = bnfold.fold(ir_model)
    assert isinstance(from_ir.model, ir.Model) and from_ir.model is not ir_model
    assert any(n.op_type == "BatchNormalization" for n in ir_model.graph)

    from_path = bnfold.fold(SAMPLES[0])
    assert isinstance(from_path.model, ir.Model)
    assert [r.action for r in from_path.records] == [r.action for r in from_proto.records]


def test_verify_api_on_protos():
    proto = onnx.load(SAMPLES[0])
    check = bnfold.verify(proto, bnfold.fold(proto).model)
    assert check.passed and check.outputs[0].name == "logits" and check.outputs[0].max_rel_err < 1e-5


def _external_copy(folder: Path, location: str = "weights.bin") -> Path:
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(onnx.load(SAMPLES[0]), path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def test_external_data_model_folds_into_another_folder_and_loads_from_there(tmp_path, monkeypatch):
    source = _external_copy(tmp_path / "a")
    before = {p.name: p.read_bytes() for p in source.parent.iterdir()}
    (tmp_path / "b").mkdir()
    out = tmp_path / "b" / "folded.onnx"
    bnfold.fold_file(source, out)
    data = data_file(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["folded.onnx", data.name]
    locations = {
        e.value
        for t in onnx.load(out, load_external_data=False).graph.initializer
        for e in t.external_data
        if e.key == "location"
    }
    assert locations == {data.name}
    assert {p.name: p.read_bytes() for p in source.parent.iterdir()} == before
    monkeypatch.chdir(tmp_path)
    loaded = onnx.load(str(out))
    feeds = random_feeds(loaded)
    np.testing.assert_allclose(run(loaded, feeds)[0], run(onnx.load(SAMPLES[0]), feeds)[0], rtol=1e-5, atol=1e-6)


def test_external_data_option_never_and_always(tmp_path):
    source = _external_copy(tmp_path / "a")
    inline = tmp_path / "inline.onnx"
    bnfold.fold_file(source, inline, external_data="never")
    assert not list(tmp_path.glob("inline.onnx*.data"))
    external = tmp_path / "ext.onnx"
    bnfold.fold_file(SAMPLES[0], external, external_data="always")
    assert data_file(external).stat().st_size > 0
    with pytest.raises(bnfold.InputError, match="--external-data must be one of"):
        bnfold.fold_file(SAMPLES[0], tmp_path / "x.onnx", external_data="sometimes")


def test_a_data_file_bnfold_did_not_name_is_never_touched(tmp_path):
    out = tmp_path / "out.onnx"
    (tmp_path / "out.onnx.data").write_bytes(b"\x00" * 10_000_000)  # perhaps another model's data
    bnfold.fold_file(_external_copy(tmp_path / "a"), out)
    assert (tmp_path / "out.onnx.data").stat().st_size == 10_000_000
    assert data_file(out).stat().st_size < 1_000_000
    onnx.checker.check_model(str(out), full_check=True)


def test_writing_again_replaces_the_data_file_bnfold_wrote_before(tmp_path):
    out = tmp_path / "out.onnx"
    first = _external_copy(tmp_path / "a")
    bnfold.fold_file(first, out)
    before = data_file(out)
    second = _external_copy(tmp_path / "b")  # another input: another data file name
    bnfold.fold_file(second, out)
    after = data_file(out)  # exactly one: the first one is gone
    assert after != before and not before.exists()
    bnfold.fold_file(second, out)  # the same input again: the same name, the same bytes
    assert data_file(out) == after


def test_the_output_may_not_be_one_of_the_inputs_data_files(tmp_path):
    source = _external_copy(tmp_path / "a", location="weights.bin")
    before = (source.parent / "weights.bin").read_bytes()
    with pytest.raises(bnfold.InputError, match="bnfold never writes over its input"):
        bnfold.fold_file(source, source.parent / "weights.bin")
    assert (source.parent / "weights.bin").read_bytes() == before


def test_folding_a_model_onto_itself_is_refused(tmp_path):
    source = _external_copy(tmp_path / "a", location="model.onnx.data")
    before = {p.name: p.read_bytes() for p in source.parent.iterdir()}
    with pytest.raises(bnfold.InputError, match=r"the output would be .*model.onnx, one of the input's files"):
        bnfold.fold_file(source, source)
    assert {p.name: p.read_bytes() for p in source.parent.iterdir()} == before


def test_compare_output_nan_and_inf_must_match():
    a = np.array([1.0, np.nan, np.inf], np.float32)
    assert compare_output("y", a, a.copy()).passed
    assert not compare_output("y", a, np.array([1.0, 0.0, np.inf], np.float32)).passed
    assert compare_output("y", a, np.array([1.0, np.nan, -np.inf], np.float32)).note == "NaN/Inf positions differ"


def test_compare_output_tolerance_is_relative_to_scale():
    a = np.array([100.0, -50.0], np.float32)
    close = compare_output("y", a, a + np.float32(1e-4))
    assert close.passed and close.max_rel_err == pytest.approx(1e-6, rel=0.1)
    far = compare_output("y", a, a + np.float32(1e-2))
    assert not far.passed and far.tolerance == pytest.approx(1e-7 + 1e-5 * 100)
    assert compare_output("y", a, a + np.float32(1e-2), Tolerance(rtol=1e-3)).passed


def test_compare_output_shape_and_integer_outputs():
    assert compare_output("y", np.zeros((2, 3)), np.zeros((2, 4))).note == "shape (2, 4) instead of (2, 3)"
    assert compare_output("i", np.array([1, 2]), np.array([1, 2])).passed
    assert not compare_output("i", np.array([1, 2]), np.array([1, 3])).passed


def test_a_model_past_the_protobuf_limit_gets_external_data_automatically(tmp_path, monkeypatch):
    from bnfold.model_io import output_layout

    monkeypatch.setattr(output_layout, "_INLINE_BUDGET", 1000)  # stands in for 2 GB
    out = tmp_path / "big.onnx"
    bnfold.fold_file(SAMPLES[0], out)
    assert data_file(out).exists()
    with pytest.raises(bnfold.InputError, match="larger than protobuf's 2 GB limit"):
        bnfold.fold_file(SAMPLES[0], tmp_path / "inline.onnx", external_data="never")


def test_streamed_inline_output_equals_the_in_memory_fold(tmp_path):
    out = tmp_path / "out.onnx"
    bnfold.fold_file(SAMPLES[0], out, check=False)
    assert onnx.load(out) == bnfold.fold(onnx.load(SAMPLES[0])).model


def test_external_tensors_stay_on_disk_and_big_folds_are_recomputed_when_written(tmp_path):
    """Bounded memory: an untouched external tensor is never read; a large folded one is not kept."""
    import onnx_ir as ir
    from helpers import bn_arrays, bn_node, make_model
    from onnx import helper

    rng = np.random.default_rng(0)
    inits = {
        "w": rng.normal(size=(256, 128, 3, 3)).astype(np.float32),  # 1.1 MiB: recomputed when written
        "untouched": rng.normal(size=(64, 128, 3, 3)).astype(np.float32),
        **bn_arrays(rng, 256),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("y", "z"),
        helper.make_node("Conv", ["x", "untouched"], ["u"], name="plain", pads=[1, 1, 1, 1]),
    ]
    model = make_model(
        nodes, [("x", np.float32, ["N", 128, 4, 4])], [("z", np.float32, None), ("u", np.float32, None)], inits
    )
    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    onnx.save(model, source, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    folded = bnfold.fold(source).model
    tensors = {v.name: v.const_value for v in folded.graph.initializers.values()}
    assert isinstance(tensors["untouched"], ir.ExternalTensor) and tensors["untouched"].raw is None  # never mapped
    assert isinstance(tensors["w"], ir.LazyTensor)
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    report = bnfold.fold_file(source, out)
    assert report.check.passed and report.records[0].action == "folded"
