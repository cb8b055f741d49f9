"""How the output is written: every tensor accounted for, big ones streamed, nothing read twice, durable.

Structure only: what is read, computed, written and synced, never how fast.
"""

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import assert_same_outputs, bn_arrays, bn_node, data_file, make_model, random_feeds, run
from onnx import helper, numpy_helper

import bnfold
from bnfold.folding import fold_math

F32 = np.float32
BIG = (256, 128, 3, 3)  # 1.1 MiB: a fold of it is computed only while the output is written


def conv_bn_model(rng, *, extra_nodes=(), extra_inits=None, outputs=(("z", F32, None),)):
    inits = {"w": rng.normal(size=BIG).astype(F32), **bn_arrays(rng, BIG[0]), **(extra_inits or {})}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        bn_node("y", "z"),
        *extra_nodes,
    ]
    return make_model(nodes, [("x", F32, ["N", BIG[1], 4, 4])], list(outputs), inits)


def conv_bn_plus_constant_model(rng):
    """Conv → BN, plus a Constant 'k' (1 KiB) added to the result."""
    offset = helper.make_node(
        "Constant",
        [],
        ["k"],
        name="k",
        value=numpy_helper.from_array(rng.normal(size=(1, BIG[0], 1, 1)).astype(F32), "k"),
    )
    add = helper.make_node("Add", ["z", "k"], ["out"], name="add")
    return conv_bn_model(rng, extra_nodes=[offset, add], outputs=[("out", F32, None)])


def save_external(model, folder: Path, convert_attribute=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save would move the caller's tensors out
    onnx.save(
        copy,
        path,
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
        convert_attribute=convert_attribute,
    )
    return path


def external_entries(path: Path) -> dict[str, dict[str, str]]:
    """Tensor name → its external_data entries, for every tensor of the file (attributes too)."""
    proto = onnx.load(path, load_external_data=False)
    tensors = list(proto.graph.initializer)
    tensors += [a.t for n in proto.graph.node for a in n.attribute if a.HasField("t")]
    return {
        t.name: {e.key: e.value for e in t.external_data}
        for t in tensors
        if t.data_location == onnx.TensorProto.EXTERNAL
    }


def test_an_untouched_external_tensor_is_copied_without_being_read(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    plain = helper.make_node("Conv", ["x", "untouched"], ["u"], name="plain", pads=[1, 1, 1, 1])
    model = conv_bn_model(
        rng,
        extra_nodes=[plain],
        extra_inits={"untouched": rng.normal(size=BIG).astype(F32)},
        outputs=[("z", F32, None), ("u", F32, None)],
    )
    source = save_external(model, tmp_path / "src")
    read = []
    real_numpy = ir.ExternalTensor.numpy
    monkeypatch.setattr(ir.ExternalTensor, "numpy", lambda self: read.append(self.name) or real_numpy(self))
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    bnfold.fold_file(source, out, check=False)
    assert "untouched" not in read and read == ["w"]  # the folded weight is read; its neighbour never is
    assert_same_outputs(model, onnx.load(out))


def test_a_deferred_weight_is_computed_once_while_writing(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    model = conv_bn_model(rng)
    source = save_external(model, tmp_path / "src")
    calls = []
    real = fold_math.scale_output_channels
    monkeypatch.setattr(fold_math, "scale_output_channels", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "folded.onnx"
    report = bnfold.fold_file(source, out, check=False)
    assert report.records[0].action == "folded" and len(calls) == 1
    assert_same_outputs(model, onnx.load(out))


def test_a_deferred_fold_that_may_overflow_is_computed_first_and_refused(tmp_path):
    rng = np.random.default_rng(2)
    shape = (256, 256, 3, 3)  # 1.1 MiB of float16
    weight = rng.normal(size=shape).astype(np.float16)
    weight[0, 0, 0, 0] = 60000
    bn = {k: v.astype(np.float16) for k, v in bn_arrays(rng, shape[0]).items()}
    bn["bn.var"][0] = 1e-4  # s[0] ≈ 100: channel 0 overflows float16
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]), bn_node("y", "z")]
    model = make_model(
        nodes, [("x", np.float16, ["N", shape[1], 4, 4])], [("z", np.float16, None)], {"w": weight, **bn}
    )
    assert not fold_math.product_fits(weight, np.array([100.0]), np.float16)
    assert fold_math.product_fits(weight, np.array([1.0]), np.float16)
    record = bnfold.fold(save_external(model, tmp_path)).records[0]
    assert (record.action, record.reason) == ("kept", "folded values overflow float16; its output is a graph output")


@pytest.mark.parametrize(
    ("array", "factors", "fits"),
    [
        (np.array([1.0, -2.0], F32), np.array([3.0, -4.0]), True),
        (np.array([3e38], F32), np.array([2.0]), False),
        (np.array([np.inf], F32), np.array([1.0]), False),
        (np.array([np.nan], F32), np.array([1.0]), False),
        (np.array([1.0], F32), np.array([np.nan]), False),
        (np.zeros(0, F32), np.array([1e300]), True),
        (np.array([1, 2], np.int32), np.array([1.0]), False),  # not a float: compute it and see
    ],
)
def test_product_fits_is_a_safe_bound(array, factors, fits):
    assert fold_math.product_fits(array, factors, array.dtype) is fits


def test_constant_attributes_stored_externally_move_into_the_output(tmp_path):
    """A Constant's value in the input's data file must not be left pointing there."""
    rng = np.random.default_rng(3)
    model = conv_bn_plus_constant_model(rng)
    source = save_external(model, tmp_path / "src")
    assert "k" in external_entries(source)
    for layout, expected_external in (("auto", True), ("never", False)):
        out = tmp_path / layout / "folded.onnx"
        out.parent.mkdir()
        bnfold.fold_file(source, out, check=False, external_data=layout)
        entries = external_entries(out)
        assert ("k" in entries) is expected_external
        assert all(e["location"] == data_file(out).name for e in entries.values())
        assert_same_outputs(model, onnx.load(out))


def test_constant_attributes_stored_inline_stay_inline(tmp_path):
    rng = np.random.default_rng(7)
    model = conv_bn_plus_constant_model(rng)
    source = save_external(model, tmp_path / "src", convert_attribute=False)
    out = tmp_path / "folded.onnx"
    bnfold.fold_file(source, out, check=False, external_data="always")
    assert "k" not in external_entries(source) and "k" not in external_entries(out)
    assert "w" in external_entries(out)
    assert_same_outputs(model, onnx.load(out))


def test_subgraph_initializers_stored_externally_are_inlined(tmp_path):
    rng = np.random.default_rng(4)
    branch = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["b"], name="add")],
        "then",
        [],
        [helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.normal(size=(1, 1, 1, 1)).astype(F32), "offset")],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["c"], name="same")],
        "else",
        [],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None)],
    )
    choose = helper.make_node("If", ["flag"], ["o"], name="choose", then_branch=branch, else_branch=other)
    model = make_model([choose], [("x", F32, [2, 3, 4, 4]), ("flag", np.bool_, [])], [("o", F32, None)])
    source = save_external(model, tmp_path / "src")
    out = tmp_path / "inline" / "folded.onnx"
    out.parent.mkdir()
    bnfold.fold_file(source, out, check=False, external_data="never")
    assert not out.with_name("folded.onnx.data").exists()
    feeds = {"x": rng.normal(size=(2, 3, 4, 4)).astype(F32), "flag": np.array(True)}
    np.testing.assert_array_equal(run(onnx.load(out), feeds)[0], run(model, feeds)[0])


def test_the_output_keeps_small_tensors_external_and_aligns_big_ones(tmp_path):
    rng = np.random.default_rng(5)
    model = conv_bn_model(rng)
    source = save_external(model, tmp_path / "src")
    out = tmp_path / "folded.onnx"
    bnfold.fold_file(source, out, check=False)
    entries = external_entries(out)
    assert set(entries) == {"w", "conv_bias"}  # the new bias (1 KiB) is external, as the input's BN tensors were
    assert int(entries["w"]["offset"]) % 4096 == 0
    assert_same_outputs(model, onnx.load(out), feeds=random_feeds(model))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc (Linux)")
def test_every_file_is_synced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    source = save_external(conv_bn_model(rng), tmp_path / "src")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{descriptor}")).name))
        real_fsync(descriptor)

    def replace(src, dst):
        events.append(("replace", Path(src).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    bnfold.fold_file(source, tmp_path / "folded.onnx", check=False)
    renamed = [name for kind, name in events if kind == "replace"]
    assert renamed == [data_file(tmp_path / "folded.onnx").name, "folded.onnx"]  # the data file first
    for name in renamed:
        assert events.index(("fsync", name)) < events.index(("replace", name))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_the_input_data_is_unmapped_before_the_check_runs(tmp_path, monkeypatch):
    """A folded graph is cyclic, so dropping it frees nothing until a collection: the tensors holding maps of
    the input's data are dropped explicitly once it is written, before onnxruntime loads a model (collector
    off here; written inline, the folded weight is computed from the mapped input while writing)."""
    import gc

    from bnfold.runs import file_run

    rng = np.random.default_rng(3)
    plain = helper.make_node("Conv", ["x", "untouched"], ["u"], name="plain", pads=[1, 1, 1, 1])
    model = conv_bn_model(
        rng,
        extra_nodes=[plain],
        extra_inits={"untouched": rng.normal(size=BIG).astype(F32)},
        outputs=[("z", F32, None), ("u", F32, None)],
    )
    source = save_external(model, tmp_path / "src")
    data = str((tmp_path / "src" / "model.onnx.data").resolve())
    mapped_at_check = []
    real = file_run._check_staged

    def check_staged(*args, **kwargs):
        mapped_at_check.append(data in Path("/proc/self/maps").read_text())
        return real(*args, **kwargs)

    monkeypatch.setattr(file_run, "_check_staged", check_staged)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        report = bnfold.fold_file(source, tmp_path / "folded.onnx", external_data="never")
    finally:
        if was_enabled:
            gc.enable()
    assert report.check.passed and mapped_at_check == [False]
