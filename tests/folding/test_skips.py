"""Never wrong: every refusal has its reason, asserted exactly, and the model stays equivalent."""

import numpy as np
import onnx
import pytest
from helpers import bn_arrays, bn_node, fold_and_check, make_model, only_record, op_counts
from onnx import helper, numpy_helper

import bnfold

F32 = np.float32


def conv_bn(
    extra_nodes=(),
    outputs=(("z", F32, None),),
    inits=None,
    inputs=(("x", F32, ["N", 3, 6, 6]),),
    bn_attrs=None,
    opset=17,
    bn_outputs=("z",),
):
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), **bn_arrays(rng, 4)}
    params.update(inits or {})
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node(
            "BatchNormalization",
            ["y", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
            list(bn_outputs),
            name="bn",
            **(bn_attrs or {}),
        ),
        *extra_nodes,
    ]
    return make_model(nodes, list(inputs), list(outputs), params, opset=opset)


@pytest.mark.parametrize(
    ("standalone", "action", "ops"),
    [("bn", "kept", {"BatchNormalization": 1}), ("mul-add", "converted", {"Mul": 1, "Add": 1})],
)
def test_producer_with_other_consumers_leaves_the_bn_standalone(standalone, action, ops):
    model = conv_bn(
        extra_nodes=[helper.make_node("Relu", ["y"], ["r"], name="relu")], outputs=[("z", F32, None), ("r", F32, None)]
    )
    folded, records = fold_and_check(model, standalone=standalone)
    record = only_record(records)
    assert (record.action, record.reason) == (
        action,
        "output of Conv 'conv' has 2 consumers; its output is a graph output",
    )
    assert op_counts(folded) == {"Conv": 1, "Relu": 1, **ops}


def test_producer_output_that_is_a_graph_output_is_not_folded():
    model = conv_bn(outputs=[("z", F32, None), ("y", F32, None)])
    folded, records = fold_and_check(model)
    assert only_record(records).reason == "output of Conv 'conv' is also a graph output; its output is a graph output"
    assert [o.name for o in folded.graph.output] == ["z", "y"]


def _assert_untouched(model, records, reason):
    result = bnfold.fold(model)
    record = only_record(result.records)
    assert (record.action, record.reason) == ("skipped", reason)
    original_bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    kept_bn = next(n for n in result.model.graph.node if n.op_type == "BatchNormalization")
    assert kept_bn.SerializeToString() == original_bn.SerializeToString()
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()


def test_training_mode_bn_is_left_byte_for_byte():
    model = conv_bn(bn_attrs={"training_mode": 1}, bn_outputs=("z", "rm", "rv"), outputs=[("z", F32, None)], opset=15)
    _assert_untouched(model, None, "training_mode=1 (uses batch statistics)")


def test_bn_with_optional_outputs_in_use_is_left():
    model = conv_bn(bn_outputs=("z", "rm", "rv"), outputs=[("z", F32, None), ("rm", F32, [4])], opset=15)
    _assert_untouched(model, None, "optional outputs (running/saved mean or variance) are in use")


def test_opset9_bn_declaring_optional_outputs_is_training():
    model = conv_bn(bn_outputs=("z", "rm", "rv", "sm", "sv"), outputs=[("z", F32, None)], opset=9)
    _assert_untouched(model, None, "declares optional outputs (training mode before opset 14)")


def test_parameter_from_graph_input_is_not_constant():
    model = conv_bn(inputs=[("x", F32, ["N", 3, 6, 6]), ("bn.scale", F32, [4])])
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "bn.scale"))
    _assert_untouched(model, None, "parameter 'scale' is not constant (computed at run time)")


def test_parameter_that_is_an_overridable_initializer():
    model = conv_bn(inputs=[("x", F32, ["N", 3, 6, 6]), ("bn.var", F32, [4])])
    _assert_untouched(model, None, "parameter 'input_var' is a graph input (can be overridden at run time)")


def test_weight_from_graph_input_leaves_bn_to_standalone():
    model = conv_bn(inputs=[("x", F32, ["N", 3, 6, 6]), ("w", F32, [4, 3, 3, 3])])
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "w"))
    record = only_record(bnfold.fold(model).records)
    assert (record.action, record.reason) == (
        "kept",
        "weight of Conv 'conv' is not constant (computed at run time); its output is a graph output",
    )


def test_parameter_shape_not_matching_channels():
    rng = np.random.default_rng(1)
    model = conv_bn(inits=bn_arrays(rng, 5))
    _assert_untouched(
        model,
        None,
        "output of Conv 'conv' has 4 channels, the affine map has 5; "
        "its output is a graph output; parameter shape (5,) does not match channel count 4",
    )


def test_parameter_shape_not_matching_a_stated_channel_count():
    rng = np.random.default_rng(1)
    model = conv_bn(inits=bn_arrays(rng, 5))
    model.graph.value_info.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 4, 4]))
    _assert_untouched(model, None, "parameter shape (5,) does not match channel count 4")


def test_parameter_shapes_that_differ_are_invalid_input():
    # not merely unfoldable: no runtime runs it (issue 21), so it is refused with the reason
    model = conv_bn(inits={"bn.mean": np.zeros(3, F32)})
    with pytest.raises(bnfold.InputError, match=r"BatchNormalization 'bn' is malformed: its parameters' shapes differ"):
        bnfold.fold(model)


def test_variance_plus_epsilon_not_positive():
    model = conv_bn(inits={"bn.var": np.array([1, -1, 1, 1], F32)})
    _assert_untouched(model, None, "input_var + epsilon <= 0 (at flat index 1)")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_parameters(bad):
    model = conv_bn(inits={"bn.mean": np.array([0, 0, bad, 0], F32)})
    _assert_untouched(model, None, "parameter 'input_mean' contains NaN or Inf")


def test_shared_weight_keeps_its_value_for_the_other_user():
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(F32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        bn_node("y", "z"),
        helper.make_node("Conv", ["x", "w"], ["other"], name="conv_other"),
    ]
    model = make_model(
        nodes,
        [("x", F32, ["N", 3, 6, 6])],
        [("z", F32, None), ("other", F32, None)],
        {"w": weight, **bn_arrays(rng, 4)},
    )
    folded, records = fold_and_check(model)
    assert only_record(records).action == "folded"
    initializers = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    np.testing.assert_array_equal(initializers["w"], weight)
    conv, other = (n for n in folded.graph.node if n.op_type == "Conv")
    assert other.input[1] == "w" and conv.input[1] != "w" and conv.input[1] in initializers


def test_two_bns_on_convs_sharing_a_weight_get_separate_weights():
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y1"], name="c1"),
        bn_node("y1", "z1", "bn1"),
        helper.make_node("Conv", ["x", "w"], ["y2"], name="c2"),
        bn_node("y2", "z2", "bn2"),
    ]
    model = make_model(
        nodes,
        [("x", F32, ["N", 3, 6, 6])],
        [("z1", F32, None), ("z2", F32, None)],
        {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), **bn_arrays(rng, 4, "bn1"), **bn_arrays(rng, 4, "bn2")},
    )
    folded, records = fold_and_check(model)
    assert [r.action for r in records] == ["folded", "folded"]
    names = [n.input[1] for n in folded.graph.node]
    assert len(set(names)) == 2


def test_quantized_weight_is_not_folded():
    rng = np.random.default_rng(4)
    inits = {
        "wq": rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8),
        "ws": np.array(0.01, F32),
        "wz": np.array(0, np.int8),
        **bn_arrays(rng, 4),
    }
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        bn_node("y", "z"),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("z", F32, None)], inits)
    folded, records = fold_and_check(model)
    assert only_record(records).reason == (
        "weight of Conv 'conv' is quantized (DequantizeLinear); fold before quantizing; its output is a graph output"
    )
    assert op_counts(folded) == {"DequantizeLinear": 1, "Conv": 1, "BatchNormalization": 1}


def test_fp16_overflow_is_refused():
    f16 = np.float16
    rng = np.random.default_rng(5)
    params = bn_arrays(rng, 4, dtype=f16)
    params["bn.scale"] = np.full(4, 8.0, f16)
    params["bn.var"] = np.full(4, 1.0, f16)
    weight = np.full((4, 3, 3, 3), 30000, f16)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z")]
    model = make_model(nodes, [("x", f16, ["N", 3, 6, 6])], [("z", f16, None)], {"w": weight, **params})
    record = only_record(bnfold.fold(model).records)
    assert (record.action, record.reason) == ("kept", "folded values overflow float16; its output is a graph output")


def test_every_record_names_its_bn():
    model = conv_bn()
    record = only_record(bnfold.fold(model).records)
    assert record.name == "bn" and record.graph == "main"
    assert isinstance(onnx.ModelProto(), onnx.ModelProto)


def test_bn_after_a_quantized_conv_is_kept_with_the_reason():
    rng = np.random.default_rng(6)
    inits = {
        "x_scale": np.array(0.05, F32),
        "x_zero": np.array(0, np.uint8),
        "w_q": rng.integers(0, 255, (4, 3, 3, 3)).astype(np.uint8),
        "w_scale": np.array(0.01, F32),
        "w_zero": np.array(128, np.uint8),
        "y_scale": np.array(0.1, F32),
        "y_zero": np.array(128, np.uint8),
        **bn_arrays(rng, 4),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="q"),
        helper.make_node(
            "QLinearConv",
            ["xq", "x_scale", "x_zero", "w_q", "w_scale", "w_zero", "y_scale", "y_zero"],
            ["yq"],
            name="qconv",
        ),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"], name="dq"),
        bn_node("y", "z"),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("z", F32, None)], inits)
    folded, records = fold_and_check(model)
    record = only_record(records)
    assert (record.action, record.reason) == (
        "kept",
        "its input comes from DequantizeLinear 'dq', a quantized op; fold before quantizing; its output is a graph output",
    )
    assert op_counts(folded)["QLinearConv"] == 1
    weights = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    np.testing.assert_array_equal(weights["w_q"], inits["w_q"])
