"""What cannot fold becomes one node: a leftover BN stays one BatchNormalization and absorbs its affine
neighbours; `standalone="mul-add"` gives Mul+Add instead. Every model here costs no more nodes after bnfold
(fold_and_check asserts it), and is checked against the original on onnxruntime."""

import numpy as np
import onnx
import pytest
from helpers import (
    assert_never_costlier,
    bn_arrays,
    bn_node,
    fold_and_check,
    make_model,
    only_record,
    op_counts,
)
from onnx import helper, numpy_helper

from bnfold.folding import fold_math

F32 = np.float32
C = 4


def per_channel(values, rank=4, dtype=F32):
    return np.asarray(values, dtype).reshape((-1,) + (1,) * (rank - 2))


def by_name(records):
    return {r.name: r for r in records}


def initializers(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def affine_chain_model(before=(), after=(), dtype=F32, bn_dtype=None, opset=17, epsilon=1e-5, rank=4):
    """x → before… → BN → after… → Relu; each step (op, constant, constant first?) by a per-channel constant.

    Nothing linear is next to the BN, so it cannot fold anywhere.
    """
    rng = np.random.default_rng(len(before) * 10 + len(after))
    inits = bn_arrays(rng, C, dtype=bn_dtype or dtype)
    nodes, current = [], "x"

    def step(op, constant, constant_first, name):
        nonlocal current
        inits[f"{name}.k"] = np.asarray(constant).astype(dtype)
        inputs = [f"{name}.k", current] if constant_first else [current, f"{name}.k"]
        nodes.append(helper.make_node(op, inputs, [f"{name}.out"], name=name))
        current = f"{name}.out"

    for index, (op, constant, constant_first) in enumerate(before):
        step(op, constant, constant_first, f"pre{index}")
    nodes.append(bn_node(current, "bn.out", epsilon=epsilon))
    current = "bn.out"
    for index, (op, constant, constant_first) in enumerate(after):
        step(op, constant, constant_first, f"post{index}")
    nodes.append(helper.make_node("Relu", [current], ["z"], name="relu"))
    shape = ["N", C] + [5] * (rank - 2)
    return make_model(nodes, [("x", dtype, shape)], [("z", dtype, None)], inits, opset=opset)


SCALE = per_channel([1.5, -2.0, 0.5, 3.0])
SHIFT = per_channel([0.1, 0.2, -0.3, 0.4])
CHAINS = {
    "caffe: BN → Mul → Add": ((), [("Mul", SCALE, False), ("Add", SHIFT, False)]),
    "before: Sub → Div → BN": ([("Sub", SHIFT, False), ("Div", SCALE, False)], ()),
    "both sides, constant first": ([("Mul", SCALE, True)], [("Add", SHIFT, True), ("Sub", SHIFT, True)]),
    "one-number constants": ([("Add", np.array(0.5), False)], [("Mul", np.array([2.0]), False)]),
}


@pytest.mark.parametrize("chain", CHAINS, ids=list(CHAINS))
def test_a_chain_of_affine_nodes_around_a_leftover_bn_becomes_one_bn(chain):
    before, after = CHAINS[chain]
    model = affine_chain_model(before, after)
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"BatchNormalization": 1, "Relu": 1}
    absorbed = [f"pre{i}" for i in range(len(before))][::-1] + [f"post{i}" for i in range(len(after))]
    bn = by_name(records)["bn"]
    assert (bn.action, bn.pattern) == ("kept", "collapsed")
    ops = {n.name: n.op_type for n in model.graph.node}
    assert bn.into == "BatchNormalization (absorbed " + ", ".join(f"{ops[n]} '{n}'" for n in absorbed) + ")"
    assert (
        bn.reason == "no Conv, ConvTranspose, DeformConv, Gemm or MatMul before it; its output feeds Relu 'relu', "
        "not a Conv, Gemm or MatMul"
    )
    for name in absorbed:
        assert (by_name(records)[name].action, by_name(records)[name].into, by_name(records)[name].pattern) == (
            "folded",
            "BatchNormalization 'bn'",
            "collapsed",
        )


def test_the_collapsed_bn_computes_s_x_plus_t_with_its_own_epsilon():
    model = affine_chain_model((), [("Mul", SCALE, False), ("Add", SHIFT, False)], epsilon=1e-3)
    folded, _ = fold_and_check(model)
    bn = next(n for n in folded.graph.node if n.op_type == "BatchNormalization")
    assert helper.get_attribute_value(bn.attribute[0]) == pytest.approx(1e-3)  # ε kept (cuDNN clamps a smaller one)
    gamma, beta, mean, var = (initializers(folded)[name] for name in bn.input[1:])
    params = initializers(model)
    s, t = fold_math.bn_scale_shift(params["bn.scale"], params["bn.bias"], params["bn.mean"], params["bn.var"], 1e-3)
    s, t = s * SCALE.reshape(-1), t * SCALE.reshape(-1) + SHIFT.reshape(-1)
    np.testing.assert_array_equal(mean, np.zeros(C, F32))
    np.testing.assert_array_equal(var, np.ones(C, F32))
    np.testing.assert_array_equal(gamma, (s * np.sqrt(1 + 1e-3)).astype(F32))  # rounded once, from float64
    np.testing.assert_array_equal(beta, t.astype(F32))


def test_two_leftover_bns_in_a_row_become_one():
    rng = np.random.default_rng(3)
    inits = {**bn_arrays(rng, C, "bn1"), **bn_arrays(rng, C, "bn2")}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu0"),
        bn_node("r", "y", "bn1"),
        bn_node("y", "y2", "bn2"),
        helper.make_node("Relu", ["y2"], ["z"], name="relu"),
    ]
    folded, records = fold_and_check(make_model(nodes, [("x", F32, ["N", C, 3, 3])], [("z", F32, None)], inits))
    assert op_counts(folded) == {"Relu": 2, "BatchNormalization": 1}
    assert [(r.name, r.action, r.into) for r in records] == [
        ("bn1", "kept", "BatchNormalization (absorbed BatchNormalization 'bn2')"),
        ("bn2", "folded", "BatchNormalization 'bn1'"),
    ]


@pytest.mark.parametrize(
    ("dtype", "bn_dtype", "rtol", "opset"),
    [(np.float16, None, 8e-3, 17), (np.float64, None, 1e-12, 17), (np.float16, F32, 8e-3, 15)],
)
def test_the_collapsed_parameters_keep_their_dtypes(dtype, bn_dtype, rtol, opset):
    model = affine_chain_model(
        (), [("Mul", SCALE, False), ("Add", SHIFT, False)], dtype=dtype, bn_dtype=bn_dtype, opset=opset
    )
    folded, _ = fold_and_check(model, rtol=rtol)
    bn = next(n for n in folded.graph.node if n.op_type == "BatchNormalization")
    assert {initializers(folded)[name].dtype for name in bn.input[1:]} == {np.dtype(bn_dtype or dtype)}


def test_a_second_consumer_breaks_the_chain():
    model = affine_chain_model((), [("Mul", SCALE, False)])
    model.graph.node.append(helper.make_node("Neg", ["bn.out"], ["n"], name="neg"))
    model.graph.output.append(helper.make_tensor_value_info("n", onnx.TensorProto.FLOAT, ["N", C, 5, 5]))
    folded, records = fold_and_check(model)
    assert op_counts(folded)["Mul"] == 1 and by_name(records)["bn"].pattern is None
    assert "post0" not in by_name(records)  # not in the BN's chain: untouched, not reported


def test_a_graph_output_between_them_breaks_the_chain():
    model = affine_chain_model((), [("Mul", SCALE, False)])
    model.graph.output.append(helper.make_tensor_value_info("bn.out", onnx.TensorProto.FLOAT, ["N", C, 5, 5]))
    folded, records = fold_and_check(model)
    assert op_counts(folded)["Mul"] == 1 and [o.name for o in folded.graph.output] == ["z", "bn.out"]
    assert (by_name(records)["bn"].action, by_name(records)["bn"].into) == ("kept", "BatchNormalization")


def test_a_constant_on_another_axis_is_not_absorbed():
    model = affine_chain_model((), [("Mul", np.arange(1, 6, dtype=F32), False)])  # [W] on NCHW
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"BatchNormalization": 1, "Mul": 1, "Relu": 1}
    assert by_name(records)["post0"].reason == (
        "no Conv, ConvTranspose, DeformConv, Gemm or MatMul before it; it runs along axis 3; a consumer can take a map along axis 1 only"
    )


def test_collapsing_never_overwrites_shared_parameters():
    rng = np.random.default_rng(4)
    inits = {**bn_arrays(rng, C), "k": SCALE}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu0"),
        bn_node("r", "y", name="bn_a"),
        helper.make_node("Mul", ["y", "k"], ["m"], name="mul"),
        helper.make_node("Relu", ["m"], ["z"], name="relu"),
        helper.make_node("Neg", ["x"], ["n"], name="neg"),
        bn_node("n", "z2", name="bn_b"),
    ]  # same parameters
    model = make_model(nodes, [("x", F32, ["N", C, 3, 3])], [("z", F32, None), ("z2", F32, None)], inits)
    folded, records = fold_and_check(model)
    assert by_name(records)["bn_a"].pattern == "collapsed" and by_name(records)["bn_b"].pattern is None
    bn_a, bn_b = (n for n in folded.graph.node if n.op_type == "BatchNormalization")
    assert all(name.endswith("_bnfolded") for name in bn_a.input[1:])
    assert list(bn_b.input[1:]) == ["bn.scale", "bn.bias", "bn.mean", "bn.var"]
    for name in bn_b.input[1:]:
        np.testing.assert_array_equal(initializers(folded)[name], inits[name])


def test_a_chain_inside_a_function_collapses_with_constant_nodes():
    rng = np.random.default_rng(5)

    def constant(name, array):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array, F32), name))

    body = [
        *[constant(k, v) for k, v in bn_arrays(rng, C).items()],
        constant("k", np.array(-2.5)),
        helper.make_node("Relu", ["x"], ["r"]),
        bn_node("r", "y", name="fn_bn"),
        helper.make_node("Mul", ["y", "k"], ["z"], name="fn_mul"),
    ]  # one number: any rank takes it
    function = helper.make_function("local", "ReluBnScale", ["x"], ["z"], body, [helper.make_opsetid("", 17)])
    model = make_model(
        [helper.make_node("ReluBnScale", ["x"], ["z"], domain="local", name="call")],
        [("x", F32, [2, C, 3, 3])],
        [("z", F32, [2, C, 3, 3])],
        functions=[function],
    )
    model.opset_import.append(helper.make_opsetid("local", 1))
    folded, records = fold_and_check(model)
    assert by_name(records)["fn_bn"].pattern == "collapsed"
    assert [n.op_type for n in folded.functions[0].node].count("Mul") == 0
    assert not folded.graph.initializer  # functions hold no initializers: Constant nodes instead


def test_mul_add_form_of_a_caffe_chain_is_two_nodes_not_four():
    model = affine_chain_model((), [("Mul", SCALE, False), ("Add", SHIFT, False)])
    folded, records = fold_and_check(model, standalone="mul-add")
    assert op_counts(folded) == {"Mul": 1, "Add": 1, "Relu": 1}
    assert_never_costlier(model, folded)
    assert (by_name(records)["bn"].action, by_name(records)["bn"].into) == ("converted", "Mul+Add")


def test_a_bn_before_a_padded_conv_stays_a_bn_or_becomes_one_add():
    rng = np.random.default_rng(6)
    inits = {**bn_arrays(rng, C), "w": rng.normal(size=(3, C, 3, 3)).astype(F32)}
    nodes = [bn_node("x", "y"), helper.make_node("Conv", ["y", "w"], ["z"], name="conv", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", F32, ["N", C, 5, 5])], [("z", F32, None)], inits)
    folded, records = fold_and_check(model)  # the default: the BN whole (as fast, faster in NCHWc)
    assert op_counts(folded) == {"BatchNormalization": 1, "Conv": 1}
    assert only_record(records).action == "kept"
    folded, records = fold_and_check(model, standalone="mul-add")  # no BN: one Add, its scale in the Conv
    assert op_counts(folded) == {"Add": 1, "Conv": 1}
    record = only_record(records)
    assert (record.action, record.into, record.pattern) == (
        "converted",
        "Add (Mul folded into Conv 'conv' (forward))",
        "scale-forward",
    )


# --- the contract on whole-net blocks ------------------------------------------------------------


def densenet_block(layers=3, growth=4, channels=8):
    """DenseNet: each layer is Concat(all before) → BN → Relu → Conv1x1 → BN → Relu → Conv3x3 (pre-activation)."""
    rng = np.random.default_rng(7)
    inits, nodes, features, width = {}, [], ["x"], channels
    for i in range(layers):
        nodes.append(helper.make_node("Concat", list(features), [f"cat{i}"], name=f"cat{i}", axis=1))
        inits.update(bn_arrays(rng, width, f"bn{i}a"))
        nodes += [
            bn_node(f"cat{i}", f"n{i}a", f"bn{i}a"),
            helper.make_node("Relu", [f"n{i}a"], [f"r{i}a"], name=f"r{i}a"),
        ]
        inits[f"w{i}a"] = rng.normal(0, 0.3, (2 * growth, width, 1, 1)).astype(F32)
        nodes.append(helper.make_node("Conv", [f"r{i}a", f"w{i}a"], [f"c{i}a"], name=f"conv{i}a"))
        inits.update(bn_arrays(rng, 2 * growth, f"bn{i}b"))
        nodes += [
            bn_node(f"c{i}a", f"n{i}b", f"bn{i}b"),
            helper.make_node("Relu", [f"n{i}b"], [f"r{i}b"], name=f"r{i}b"),
        ]
        inits[f"w{i}b"] = rng.normal(0, 0.3, (growth, 2 * growth, 3, 3)).astype(F32)
        nodes.append(helper.make_node("Conv", [f"r{i}b", f"w{i}b"], [f"c{i}b"], name=f"conv{i}b", pads=[1, 1, 1, 1]))
        features.append(f"c{i}b")
        width += growth
    nodes.append(helper.make_node("Concat", features, ["z"], name="out", axis=1))
    return make_model(nodes, [("x", F32, ["N", channels, 6, 6])], [("z", F32, None)], inits)


def preact_resnet_block(channels=6):
    """x → BN → Relu → Conv3x3 → BN → Relu → Conv3x3 → Add(x)."""
    rng = np.random.default_rng(8)
    inits = {
        **bn_arrays(rng, channels, "bn1"),
        **bn_arrays(rng, channels, "bn2"),
        "w1": rng.normal(0, 0.3, (channels, channels, 3, 3)).astype(F32),
        "w2": rng.normal(0, 0.3, (channels, channels, 3, 3)).astype(F32),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["x0"], name="stem"),
        bn_node("x0", "n1", "bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        bn_node("c1", "n2", "bn2"),
        helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x0"], ["z"], name="residual"),
    ]
    return make_model(nodes, [("x", F32, ["N", channels, 6, 6])], [("z", F32, None)], inits)


def test_densenet_block_keeps_its_pre_activation_bns_as_bn():
    model = densenet_block()
    folded, records = fold_and_check(model)
    actions = {r.name: r.action for r in records}
    assert [actions[f"bn{i}a"] for i in range(3)] == ["kept"] * 3  # Concat → BN → Relu: nothing to fold into
    assert [actions[f"bn{i}b"] for i in range(3)] == ["folded"] * 3  # Conv → BN
    assert op_counts(folded)["BatchNormalization"] == 3 and "Mul" not in op_counts(folded)


def test_preact_resnet_block_keeps_its_first_bn():
    _folded, records = fold_and_check(preact_resnet_block())
    assert [(r.name, r.action) for r in records] == [("bn1", "kept"), ("bn2", "folded")]
