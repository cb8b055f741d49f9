"""BatchNormalization from opset 1 to the newest: is_test, consumed_inputs, spatial."""

import numpy as np
import onnx
import pytest
from helpers import bn_arrays, fold_and_check, make_model, only_record, op_counts, random_feeds, run
from onnx import helper, numpy_helper, version_converter

import bnfold

F32 = np.float32
BN_INPUTS = ["bn.scale", "bn.bias", "bn.mean", "bn.var"]


def legacy_model(nodes, params, opset, out_shape, x_shape=(2, 3, 5, 5), with_conv_weight=None):
    """IR 3: every initializer is listed as a graph input too."""
    inits = dict(params)
    if with_conv_weight is not None:
        inits["w"] = with_conv_weight
    inputs = [("x", F32, list(x_shape))] + [(k, F32, list(v.shape)) for k, v in inits.items()]
    return make_model(nodes, inputs, [("z", F32, list(out_shape))], inits, opset=opset, ir_version=3)


def conv_bn_legacy(opset, **bn_attrs):
    rng = np.random.default_rng(opset)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["y", *BN_INPUTS], ["z"], name="bn", **bn_attrs),
    ]
    return legacy_model(
        nodes, bn_arrays(rng, 4), opset, (2, 4, 3, 3), with_conv_weight=rng.normal(size=(4, 3, 3, 3)).astype(F32)
    )


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
def test_conv_bn_folds_at_each_opset_ort_runs(opset):
    folded, records = fold_and_check(conv_bn_legacy(opset))
    assert only_record(records).action == "folded"
    assert op_counts(folded) == {"Conv": 1}
    assert folded.ir_version == 3 and folded.opset_import[0].version == opset


@pytest.mark.parametrize(
    ("opset", "attrs"), [(1, {"is_test": 1, "consumed_inputs": [0, 0, 0, 1, 1]}), (6, {"is_test": 1})]
)
def test_conv_bn_folds_before_opset_7(opset, attrs):
    model = conv_bn_legacy(opset, **attrs)
    result = bnfold.fold(model)
    onnx.checker.check_model(result.model, full_check=True)
    assert only_record(result.records).action == "folded"
    assert op_counts(result.model) == {"Conv": 1}
    # onnxruntime has no kernels before opset 7: the reference is the original converted to opset 7,
    # the folded Conv means the same at opset 7 as at opset 1.
    reference = version_converter.convert_version(model, 7)
    folded = onnx.ModelProto.FromString(result.model.SerializeToString())
    folded.opset_import[0].version = 7
    feeds = random_feeds(model)
    np.testing.assert_allclose(run(folded, feeds)[0], run(reference, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [1, 6])
def test_is_test_0_is_training_mode(opset):
    attrs = {"is_test": 0, **({"consumed_inputs": [0, 0, 0, 1, 1]} if opset == 1 else {})}
    model = conv_bn_legacy(opset, **attrs)
    result = bnfold.fold(model)
    assert (only_record(result.records).action, only_record(result.records).reason) == (
        "skipped",
        "is_test=0 (training mode, opset < 7)",
    )
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()


def test_standalone_bn_before_opset_7_uses_legacy_broadcast():
    rng = np.random.default_rng(6)
    params = bn_arrays(rng, 3)
    node = helper.make_node("BatchNormalization", ["x", *BN_INPUTS], ["z"], name="bn", is_test=1)
    model = legacy_model([node], params, 6, (2, 3, 5, 5))
    assert only_record(bnfold.fold(model).records).action == "kept"
    result = bnfold.fold(model, standalone="mul-add")
    onnx.checker.check_model(result.model, full_check=True)
    mul, add = result.model.graph.node
    for node in (mul, add):
        assert {a.name: helper.get_attribute_value(a) for a in node.attribute} == {"broadcast": 1, "axis": 1}
    consts = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    scale, shift = consts[mul.input[1]], consts[add.input[1]]
    assert scale.shape == (3,)
    # Mul/Add with broadcast=1, axis=1 align B with X's axis 1:
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 5))
    folded = x * scale[None, :, None, None] + shift[None, :, None, None]
    g, b, m, v = (params[k].astype(np.float64)[None, :, None, None] for k in BN_INPUTS)
    np.testing.assert_allclose(folded, g * (x - m) / np.sqrt(v + 1e-5) + b, rtol=1e-6, atol=1e-6)


def caffe2_scale_layers(first_op="Conv", scale_axis=1):
    """Caffe2 at opset 6: BN then a Scale layer as Mul/Add with `broadcast=1, axis=1`."""
    rng = np.random.default_rng(61)
    params = {**bn_arrays(rng, 4), "s": rng.uniform(0.5, 1.5, 4).astype(F32), "t": rng.normal(size=4).astype(F32)}
    if scale_axis != 1:
        params["s"] = rng.uniform(0.5, 1.5, 3).astype(F32)  # [W]: suffix matching, along the width
    attrs = {"broadcast": 1} if scale_axis != 1 else {"broadcast": 1, "axis": 1}
    first = (
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3])
        if first_op == "Conv"
        else helper.make_node("Relu", ["x"], ["y"], name="relu")
    )
    nodes = [
        first,
        helper.make_node("BatchNormalization", ["y", *BN_INPUTS], ["b"], name="bn", is_test=1),
        helper.make_node("Mul", ["b", "s"], ["m"], name="scale_mul", **attrs),
        helper.make_node("Add", ["m", "t"], ["z"], name="scale_add", broadcast=1, axis=1),
    ]
    x_shape = (2, 3, 5, 5) if first_op == "Conv" else (2, 4, 3, 3)
    return legacy_model(
        nodes, params, 6, (2, 4, 3, 3), x_shape=x_shape, with_conv_weight=rng.normal(size=(4, 3, 3, 3)).astype(F32)
    )


def at_opset_7(model):
    """The model restated at opset 7 by hand (onnx's converter rejects these graphs): legacy attributes
    dropped, a `broadcast=1, axis=1` constant [C] reshaped to [C, 1, 1] (numpy broadcasting)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.opset_import[0].version = 7
    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("axis") == 1 and attrs.get("broadcast") == 1 and node.input[1] in initializers:
            array = numpy_helper.to_array(initializers[node.input[1]])
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(array.reshape(-1, 1, 1), node.input[1]))
        kept = [a for a in node.attribute if a.name not in ("broadcast", "axis", "is_test", "consumed_inputs")]
        del node.attribute[:]
        node.attribute.extend(kept)
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    model.graph.ClearField("input")
    model.graph.input.extend(graph_inputs)
    model.ir_version = 4  # initializers need not be listed as inputs
    return model


def assert_same_at_opset_7(model, folded_model):
    """onnxruntime has no kernels before opset 7: compare both restated at opset 7."""
    feeds = random_feeds(model)
    expected = run(at_opset_7(model), feeds)[0]
    actual = run(at_opset_7(folded_model), feeds)[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize(("first_op", "left"), [("Conv", {"Conv": 1}), ("Relu", {"Relu": 1, "BatchNormalization": 1})])
def test_opset_6_scale_layers_with_legacy_broadcast_fold_or_collapse(first_op, left):
    model = caffe2_scale_layers(first_op)
    result = bnfold.fold(model)
    onnx.checker.check_model(result.model, full_check=True)
    assert op_counts(result.model) == left
    assert_same_at_opset_7(model, result.model)


def test_legacy_broadcast_without_axis_matches_from_the_right_and_stays_off_the_channel():
    """`broadcast=1` without `axis` aligns a [W] constant with the last axis: not the Conv's channels."""
    model = caffe2_scale_layers(scale_axis=None)
    result = bnfold.fold(model)
    assert op_counts(result.model) == {"Conv": 1, "Mul": 1, "Add": 1}
    mul = next(n for n in result.model.graph.node if n.op_type == "Mul")
    assert mul.name == "scale_mul" and mul.input[1] == "s"
    assert_same_at_opset_7(model, result.model)


def test_spatial_0_standalone_keeps_the_full_parameter_shape():
    rng = np.random.default_rng(7)
    params = bn_arrays(rng, 3, shape=(3, 5, 5))
    node = helper.make_node("BatchNormalization", ["x", *BN_INPUTS], ["z"], name="bn", spatial=0)
    model = legacy_model([node], params, 7, (2, 3, 5, 5))
    assert only_record(fold_and_check(model)[1]).action == "kept"
    folded, records = fold_and_check(model, standalone="mul-add")
    assert only_record(records).action == "converted"
    scale = next(i for i in folded.graph.initializer if i.name == folded.graph.node[0].input[1])
    assert list(scale.dims) == [3, 5, 5]


def test_spatial_0_never_folds_into_a_conv():
    rng = np.random.default_rng(8)
    params = bn_arrays(rng, 4, shape=(4, 3, 3))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["y", *BN_INPUTS], ["z"], name="bn", spatial=0),
    ]
    model = legacy_model(nodes, params, 7, (2, 4, 3, 3), with_conv_weight=rng.normal(size=(4, 3, 3, 3)).astype(F32))
    folded, records = fold_and_check(model)
    record = only_record(records)
    assert (record.action, record.reason) == (
        "kept",
        "per-element statistics (spatial=0) cannot fold into a weight; its output is a graph output",
    )
    assert op_counts(folded) == {"Conv": 1, "BatchNormalization": 1}


@pytest.mark.parametrize("opset", [7, 8])
def test_spatial_0_on_an_n_by_c_input_is_per_channel_and_folds_into_the_gemm(opset):
    """MXNet exports `fc1 → BatchNorm` with spatial=0: on [N, C] each channel is one element."""
    rng = np.random.default_rng(opset)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc1", transB=1),
        helper.make_node("BatchNormalization", ["y", *BN_INPUTS], ["z"], name="fc1_bn", spatial=0, epsilon=2e-5),
    ]
    params = {**bn_arrays(rng, 6), "b": rng.normal(size=6).astype(F32)}
    model = legacy_model(
        nodes, params, opset, (2, 6), x_shape=(2, 5), with_conv_weight=rng.normal(size=(6, 5)).astype(F32)
    )
    folded, records = fold_and_check(model)
    assert (only_record(records).action, only_record(records).into) == ("folded", "Gemm 'fc1'")
    assert op_counts(folded) == {"Gemm": 1}


def test_spatial_1_at_opset_7_folds_as_usual():
    _folded, records = fold_and_check(conv_bn_legacy(7, spatial=1))
    assert only_record(records).action == "folded"


@pytest.mark.parametrize("given", ["path", "proto", "ir"])
def test_ir3_models_come_back_valid_whatever_they_were_given_as(given, tmp_path):
    import onnx_ir as ir

    model = conv_bn_legacy(9)
    path = tmp_path / "legacy.onnx"
    onnx.save(model, path)
    source = {"path": path, "proto": model, "ir": ir.serde.deserialize_model(model)}[given]
    folded = bnfold.fold(source).model
    proto = folded if isinstance(folded, onnx.ModelProto) else ir.serde.serialize_model(folded)
    onnx.checker.check_model(proto, full_check=True)  # IR 3: every initializer must be a graph input too
    listed = {i.name for i in proto.graph.input}
    assert proto.ir_version == 3 and proto.graph.initializer
    assert all(t.name in listed for t in proto.graph.initializer)
    assert op_counts(proto) == {"Conv": 1}
