"""Nothing lost: everything but the touched tensors and the removed BN comes out as it went in.

Also: folding is deterministic (byte-identical outputs) and idempotent.
"""

import numpy as np
import onnx
from conftest import SAMPLE
from helpers import bn_arrays, bn_node, data_file, make_model
from onnx import helper, numpy_helper

import bnfold

F32 = np.float32


def rich_model() -> onnx.ModelProto:
    """A model carrying every kind of information bnfold must keep."""
    rng = np.random.default_rng(0)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", doc_string="the conv", pads=[1, 1, 1, 1])
    helper.set_metadata_props(conv, {"origin": "layer1.conv"})
    relu = helper.make_node("Relu", ["z"], ["r"], name="relu", doc_string="keeps its doc")
    helper.set_metadata_props(relu, {"origin": "layer1.relu"})
    add_sparse = helper.make_node("Add", ["r", "last_unrelated"], ["s"], name="add_sparse")
    gelu = helper.make_node("MyAct", ["s"], ["out"], domain="custom.act", name="act")
    nodes = [conv, bn_node("y", "z", "bn"), relu, add_sparse, gelu]
    inits = {
        "first_unrelated": np.arange(3, dtype=F32),
        "w": rng.normal(size=(4, 3, 3, 3)).astype(F32),
        **bn_arrays(rng, 4),
        "last_unrelated": np.ones(6, F32),
    }
    function = helper.make_function(
        "custom.act",
        "MyAct",
        ["a"],
        ["b"],
        [helper.make_node("Relu", ["a"], ["b"], name="inner")],
        [helper.make_opsetid("", 17)],
        doc_string="a local function",
    )
    model = make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("out", F32, ["N", 4, 6, 6])], inits, functions=[function])
    model.opset_import.append(helper.make_opsetid("custom.act", 1))
    # Sparse tensors feed no standard op; it only has to survive.
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5.0], F32), "sparse_bias"),
        numpy_helper.from_array(np.array([1], np.int64)),
        [6],
    )
    model.graph.sparse_initializer.append(sparse)
    model.graph.value_info.extend(
        [
            helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 6, 6]),
            helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, ["N", 4, 6, 6]),
        ]
    )
    model.producer_name, model.producer_version = "fidelity-test", "9.9"
    model.domain, model.model_version, model.doc_string = "org.example", 42, "model doc"
    model.graph.doc_string = "graph doc"
    helper.set_model_props(model, {"author": "bnfold tests", "license": "MIT"})
    helper.set_metadata_props(model.graph, {"graph_key": "graph_value"})
    onnx.checker.check_model(model, full_check=True)
    return model


def test_everything_untouched_is_kept():
    model = rich_model()
    folded = bnfold.fold(model).model
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        assert getattr(folded, field) == getattr(model, field), field
    assert folded.metadata_props == model.metadata_props
    assert folded.opset_import == model.opset_import
    assert [f.SerializeToString() for f in folded.functions] == [f.SerializeToString() for f in model.functions]
    assert folded.graph.name == model.graph.name and folded.graph.doc_string == model.graph.doc_string
    assert folded.graph.metadata_props == model.graph.metadata_props
    assert [s.SerializeToString() for s in folded.graph.sparse_initializer] == [
        s.SerializeToString() for s in model.graph.sparse_initializer
    ]
    assert folded.graph.input == model.graph.input and folded.graph.output == model.graph.output

    original_nodes = {n.name: n for n in model.graph.node}
    assert [n.name for n in folded.graph.node] == ["conv", "relu", "add_sparse", "act"]
    for node in folded.graph.node:
        before = original_nodes[node.name]
        assert (node.doc_string, node.metadata_props, node.attribute, node.domain) == (
            before.doc_string,
            before.metadata_props,
            before.attribute,
            before.domain,
        )
    assert original_nodes["conv"].input == folded.graph.node[0].input[:2]  # weight updated in place, name kept

    names = [i.name for i in folded.graph.initializer]
    assert names == ["first_unrelated", "w", "last_unrelated", "conv_bias"]
    before = {i.name: i.SerializeToString() for i in model.graph.initializer}
    for tensor in folded.graph.initializer:
        if tensor.name in ("first_unrelated", "last_unrelated"):
            assert tensor.SerializeToString() == before[tensor.name]


def test_value_info_of_removed_values_is_dropped():
    folded = bnfold.fold(rich_model()).model
    # "y" (the Conv's old output) is gone: the Conv now writes "z", the BN's output.
    assert [v.name for v in folded.graph.value_info] == ["r"]
    assert folded.graph.node[0].output == ["z"]
    produced = {o for n in folded.graph.node for o in n.output}
    assert {v.name for v in folded.graph.value_info} <= produced


def test_folding_is_deterministic(tmp_path):
    source = tmp_path / "in.onnx"
    onnx.save(rich_model(), source)
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    bnfold.fold_file(source, first, check=False)
    bnfold.fold_file(source, second, check=False)
    assert first.read_bytes() == second.read_bytes()


def test_folding_is_idempotent(tmp_path):
    sample = tmp_path / "sample.onnx"
    onnx.save(onnx.load(SAMPLE), sample)
    once, twice = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    bnfold.fold_file(sample, once)
    report = bnfold.fold_file(once, twice)
    # Nothing left to change: no check is needed, and the model is written as it was.
    assert [(r.name, r.action) for r in report.records] == [("input_norm", "kept"), ("bn3", "kept")]
    assert report.check is None
    assert twice.read_bytes() == once.read_bytes()


def test_external_data_layout_is_deterministic_and_idempotent(tmp_path):
    source = tmp_path / "in.onnx"
    onnx.save(rich_model(), source, save_as_external_data=True, location="in.onnx.data", size_threshold=0)
    once, again, twice = tmp_path / "once.onnx", tmp_path / "again.onnx", tmp_path / "twice.onnx"
    bnfold.fold_file(source, once, check=False)
    bnfold.fold_file(source, again, check=False)
    bnfold.fold_file(once, twice, check=False)
    data = lambda p: data_file(p).read_bytes()  # noqa: E731
    assert data(once) == data(again) == data(twice)
    model_bytes = once.read_bytes()
    bnfold.fold_file(source, once, check=False)  # the same input to the same output: the same bytes
    assert once.read_bytes() == model_bytes and data(once) == data(again)
