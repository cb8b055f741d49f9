"""Nothing to fold, nothing paid: the scan that spots such models, and the copy-through that writes them."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from builders import exporters
from helpers import bn_arrays, bn_node, make_model
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.model_io.prescreen import may_fold

F32 = np.float32


def per_channel(values):
    return np.asarray(values, F32).reshape(-1, 1, 1)


def _model(nodes, inits, x_shape=("N", 4, 6, 6), opset=17, functions=()):
    return make_model(nodes, [("x", F32, list(x_shape))], [("z", F32, None)], inits, opset=opset, functions=functions)


def transformer_block():
    """LayerNorm written out, attention with computed weights, a rank-3 MatMul with its bias Add, GELU."""
    rng = np.random.default_rng(0)
    inits = {
        "gamma": rng.normal(size=8).astype(F32),
        "beta": rng.normal(size=8).astype(F32),
        "w": rng.normal(size=(8, 8)).astype(F32),
        "bias": rng.normal(size=8).astype(F32),
        "half": np.array(0.5, F32),
        "axes": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"]),
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "centred"], ["square"]),
        helper.make_node("ReduceMean", ["square", "axes"], ["var"]),
        helper.make_node("Sqrt", ["var"], ["std"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["ln"]),
        helper.make_node("Transpose", ["ln"], ["ln_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["ln", "ln_t"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["attention"], axis=-1),
        helper.make_node("MatMul", ["attention", "ln"], ["mixed"]),
        helper.make_node("Relu", ["mixed"], ["act"]),
        helper.make_node("Mul", ["act", "half"], ["z"]),
    ]
    return _model(nodes, inits, x_shape=("N", 5, 8), opset=18)  # ReduceMean takes its axes as an input


def test_a_relu_chain_and_a_transformer_block_have_nothing_to_fold():
    relus = [helper.make_node("Relu", ["x" if i == 0 else f"r{i - 1}"], [f"r{i}"]) for i in range(20)]
    relus.append(helper.make_node("Identity", ["r19"], ["z"]))
    for model in (_model(relus, {}), transformer_block()):
        assert may_fold(model) is False
        result = bnfold.fold(model)
        assert result.records == []
        assert result.model.graph.SerializeToString() == model.graph.SerializeToString()


def _conv(x="x", w="w", out="c", **attrs):
    return helper.make_node("Conv", [x, w], [out], **attrs)


def _weights(rng, cout=4, cin=4, k=1):
    return {"w": rng.normal(size=(cout, cin, k, k)).astype(F32)}


def _with_bn():
    rng = np.random.default_rng(1)
    return _model([_conv(), bn_node("c", "z")], {**_weights(rng), **bn_arrays(rng, 4)})


def _mul_after_conv():
    rng = np.random.default_rng(2)
    return _model(
        [_conv(), helper.make_node("Mul", ["c", "k"], ["z"])], {**_weights(rng), "k": per_channel([1, 2, 3, 4])}
    )


def _mul_before_conv_through_identity():
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["m"]),
        helper.make_node("Identity", ["m"], ["i"]),
        _conv("i", out="z"),
    ]
    return _model(nodes, {**_weights(rng), "k": per_channel([1, 2, 3, 4])})


def _mul_by_a_computed_constant_behind_a_reshape():
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("MatMul", ["x", "w2"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["r"]),
        helper.make_node("ConstantOfShape", ["count"], ["k"], value=numpy_helper.from_array(np.array([2.0], F32))),
        helper.make_node("Mul", ["r", "k"], ["z"]),
    ]
    inits = {
        "w2": rng.normal(size=(6, 3)).astype(F32),
        "shape": np.array([-1, 3], np.int64),
        "count": np.array([3], np.int64),
    }
    return _model(nodes, inits, x_shape=(2, 6))


def _residual_conv_plus_input():
    rng = np.random.default_rng(5)
    nodes = [_conv(pads=[0, 0, 0, 0]), helper.make_node("Add", ["c", "x"], ["z"])]
    return _model(nodes, _weights(rng))


def _bn_in_a_function():
    rng = np.random.default_rng(6)
    params = bn_arrays(rng, 4)
    body = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
        for name, value in params.items()
    ]
    body.append(bn_node("fx", "fy"))
    function = helper.make_function("local", "Norm", ["fx"], ["fy"], body, [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Norm", ["x"], ["z"], domain="local")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, 6, 6])],
    )
    return helper.make_model(
        graph, functions=[function], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    )


def _bn_in_an_if_branch():
    rng = np.random.default_rng(7)
    params = bn_arrays(rng, 4)
    branch = helper.make_graph(
        [bn_node("x", "y")],
        "then",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y2"])],
        "else",
        [],
        [helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)],
    )
    nodes = [helper.make_node("If", ["flag"], ["z"], then_branch=branch, else_branch=other)]
    return make_model(nodes, [("x", F32, ["N", 4, 6, 6]), ("flag", np.bool_, [])], [("z", F32, None)], {})


@pytest.mark.parametrize(
    "build",
    [
        _with_bn,
        _mul_after_conv,
        _mul_before_conv_through_identity,
        _mul_by_a_computed_constant_behind_a_reshape,
        _residual_conv_plus_input,
        _bn_in_a_function,
        _bn_in_an_if_branch,
    ],
)
def test_the_scan_sees_every_kind_of_work(build):
    assert may_fold(build()) is True


EXPORTER_MODELS = {
    "caffe2": lambda: exporters.caffe2_dense(9),
    "levit": exporters.levit_linear_norm,
    "paddle": exporters.paddle_conv1d_linear,
    "flax": exporters.flax_linear_rank3,
    "tf2onnx": exporters.tf2onnx_noopt,
    "keras_nhwc": exporters.keras_dense_nhwc,
    "keras_fp16": exporters.keras_fp16,
    "repvgg": exporters.repvgg_block,
    "mobileone": exporters.mobileone_block,
    "acnet": lambda: exporters.acnet_block([(3, 3), (1, 3)]),
}


@pytest.mark.parametrize("name", sorted(EXPORTER_MODELS))
def test_every_exporter_model_is_seen_as_work(name):
    model = EXPORTER_MODELS[name]()
    assert may_fold(model) is True
    assert bnfold.fold(model).records


def test_a_model_with_nothing_to_fold_is_copied_through_byte_for_byte_without_onnx_ir(tmp_path):
    relus = [helper.make_node("Relu", ["x" if i == 0 else f"r{i - 1}"], [f"r{i}"], name=f"relu{i}") for i in range(50)]
    relus.append(helper.make_node("Identity", ["r49"], ["z"], name="out"))
    model = _model(relus, {})
    model.metadata_props.add(key="note", value="kept as it is")
    source, out, report = tmp_path / "in.onnx", tmp_path / "sub" / "out.onnx", tmp_path / "r.json"
    onnx.save(model, source)
    script = (
        "import sys, bnfold\n"
        "report = bnfold.fold_file(sys.argv[1], sys.argv[2], report=sys.argv[3])\n"
        "print('onnx_ir' in sys.modules, report.unchanged, report.check)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(source), str(out), str(report)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True", "None"]
    assert out.read_bytes() == source.read_bytes()
    data = json.loads(report.read_text())
    assert data["nodes"] == [] and data["ops"]["Relu"] == [50, 50] and data["unchanged"] is True
    assert data["size"] == {"before": source.stat().st_size, "after": source.stat().st_size}


def test_a_model_whose_bns_all_stay_as_they_were_is_written_byte_for_byte(tmp_path):
    """The scan sees BNs, the pass keeps them (training mode, nothing to fold into): no re-serialization."""
    rng = np.random.default_rng(5)
    nodes = [bn_node("x", "t", prefix="train", name="train", training_mode=1), bn_node("t", "z", name="kept")]
    inits = {**bn_arrays(rng, 3, prefix="train"), **bn_arrays(rng, 3)}
    model = make_model(nodes, [("x", np.float32, ["N", 3, 4, 4])], [("z", np.float32, None)], inits)
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    report = bnfold.fold_file(source, out)
    assert [(r.name, r.action) for r in report.records] == [("train", "skipped"), ("kept", "kept")]
    assert report.unchanged and report.check is None
    assert out.read_bytes() == source.read_bytes()


def test_copy_through_still_refuses_writing_over_its_input_and_plans_a_dryinvoke(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["z"])], {})
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    with pytest.raises(bnfold.InputError, match="bnfold never writes over its input"):
        bnfold.fold_file(source, source)
    plan = bnfold.fold_file(source, None, dry_run=True)
    assert plan.records == [] and plan.diagnostics == {} and plan.output is None
