"""Weights and BN parameters behind the constant subgraphs real exporters emit."""

import numpy as np
import pytest
from helpers import bn_arrays, fold_and_check, make_model, only_record, op_counts
from onnx import helper, numpy_helper

import bnfold

F32 = np.float32


def _constant(name, array):
    return helper.make_node("Constant", [], [name], name=f"make_{name}", value=numpy_helper.from_array(array, name))


def _conv_bn(param_nodes, inits, bn_inputs=("bn.scale", "bn.bias", "bn.mean", "bn.var"), weight="w", bias=None):
    conv_inputs = ["x", weight] + ([bias] if bias else [])
    nodes = [
        *param_nodes,
        helper.make_node("Conv", conv_inputs, ["y"], name="conv"),
        helper.make_node("BatchNormalization", ["y", *bn_inputs], ["z"], name="bn"),
    ]
    return make_model(nodes, [("x", F32, [1, 3, 6, 6])], [("z", F32, None)], inits)


def _check_folded(model, leftover=None):
    folded, records = fold_and_check(model)
    assert only_record(records).action == "folded"
    assert op_counts(folded) == (leftover or {"Conv": 1})
    return folded


def test_params_from_constant_nodes():
    rng = np.random.default_rng(0)
    params = bn_arrays(rng, 4)
    nodes = [_constant(name, array) for name, array in params.items()]
    _check_folded(_conv_bn(nodes, {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32)}))


def test_params_behind_identity_cast_unsqueeze_reshape_expand():
    rng = np.random.default_rng(1)
    params = bn_arrays(rng, 4)
    nodes = [
        helper.make_node("Identity", ["bn.scale"], ["scale_id"], name="id"),
        helper.make_node("Cast", ["bias64"], ["bias_cast"], name="cast", to=1),
        helper.make_node("Reshape", ["mean2d", "flat"], ["mean_flat"], name="reshape"),
        helper.make_node("Expand", ["var1", "four"], ["var_full"], name="expand"),
    ]
    inits = {
        "w": rng.normal(size=(4, 3, 3, 3)).astype(F32),
        "bn.scale": params["bn.scale"],
        "bias64": params["bn.bias"].astype(np.float64),
        "mean2d": params["bn.mean"].reshape(2, 2),
        "flat": np.array([4], np.int64),
        "var1": np.array([0.7], F32),
        "four": np.array([4], np.int64),
    }
    model = _conv_bn(nodes, inits, bn_inputs=("scale_id", "bias_cast", "mean_flat", "var_full"))
    folded = _check_folded(model)
    assert {i.name for i in folded.graph.initializer} == {"w", "conv_bias"}


def test_params_from_constant_of_shape_and_unsqueeze():
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node(
            "ConstantOfShape", ["shape4"], ["ones"], name="cos", value=numpy_helper.from_array(np.array([1.0], F32))
        ),
        helper.make_node("Unsqueeze", ["mean_scalar", "axes"], ["mean_vec"], name="unsq"),
        helper.make_node("Expand", ["mean_vec", "shape4"], ["mean_full"], name="exp"),
    ]
    inits = {
        "w": rng.normal(size=(4, 3, 3, 3)).astype(F32),
        "shape4": np.array([4], np.int64),
        "mean_scalar": np.array(0.25, F32),
        "axes": np.array([0], np.int64),
        "bn.bias": np.full(4, 0.1, F32),
    }
    _check_folded(_conv_bn(nodes, inits, bn_inputs=("ones", "bn.bias", "mean_full", "ones")))


def test_dynamo_style_zero_bias_through_shape_expand_castlike():
    """torch.onnx dynamo export: b = Expand(CastLike(0, x), Expand(Shape(W)[0:1], [1]))."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Shape", ["w"], ["cout"], name="shape", start=0, end=1),
        _constant("one", np.array([1], np.int64)),
        helper.make_node("Expand", ["cout", "one"], ["bias_shape"], name="exp1"),
        _constant("zero", np.array(0.0, np.float64)),
        helper.make_node("CastLike", ["zero", "x"], ["zero_like"], name="castlike"),
        helper.make_node("Expand", ["zero_like", "bias_shape"], ["zero_bias"], name="exp2"),
    ]
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), **bn_arrays(rng, 4)}
    folded = _check_folded(_conv_bn(nodes, inits, bias="zero_bias"))
    conv = folded.graph.node[0]
    assert conv.input[1] == "w"  # the weight kept its name: the dead Shape no longer uses it


def test_weight_behind_transpose_for_matmul():
    """TorchScript exports Linear(bias=False) as MatMul(x, Transpose(W))."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Transpose", ["W"], ["Wt"], name="t", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "Wt"], ["y"], name="mm"),
        helper.make_node("BatchNormalization", ["y", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["z"], name="bn"),
    ]
    model = make_model(
        nodes,
        [("x", F32, ["N", 6])],
        [("z", F32, None)],
        {"W": rng.normal(size=(5, 6)).astype(F32), **bn_arrays(rng, 5)},
    )
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"Gemm": 1}
    assert only_record(records).into == "MatMul 'mm'"


def test_unrelated_dead_nodes_are_left_alone():
    rng = np.random.default_rng(5)
    params = bn_arrays(rng, 4)
    dead = helper.make_node("Identity", ["bn.scale"], ["unused"], name="already_dead")
    model = _conv_bn([dead], {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), **params})
    folded = _check_folded(model, leftover={"Conv": 1, "Identity": 1})
    assert any(n.name == "already_dead" for n in folded.graph.node)


def test_random_ops_are_not_constants():
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("RandomUniform", [], ["rand_scale"], name="rand", shape=[4], dtype=1)]
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), **bn_arrays(rng, 4)}
    model = _conv_bn(nodes, inits, bn_inputs=("rand_scale", "bn.bias", "bn.mean", "bn.var"))
    record = only_record(bnfold.fold(model).records)
    assert (record.action, record.reason) == ("skipped", "parameter 'scale' is not constant (computed at run time)")


@pytest.mark.parametrize("ir_version", [3])
def test_old_ir_initializers_listed_as_inputs_are_constants(ir_version):
    rng = np.random.default_rng(7)
    params = {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), **bn_arrays(rng, 4)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("BatchNormalization", ["y", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["z"], name="bn"),
    ]
    inputs = [("x", F32, [1, 3, 6, 6])] + [(n, F32, list(a.shape)) for n, a in params.items()]
    model = make_model(nodes, inputs, [("z", F32, None)], params, opset=8, ir_version=ir_version)
    folded, records = fold_and_check(model)
    assert only_record(records).action == "folded"
    # Still IR 3: every remaining initializer, the new bias too, is listed as an input.
    assert [i.name for i in folded.graph.input] == ["x", "w", "conv_bias"]
