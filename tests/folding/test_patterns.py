"""Folds no other tool does: BN before Conv/Gemm, affine chains, MatMul+Add+BN, BN after Concat.

Positive cases are checked against the original on onnxruntime (optimizations off);
each has a negative twin whose reason is asserted exactly.
"""

import numpy as np
import pytest
from builders.exporters import levit_linear_norm_torchscript
from helpers import assert_same_outputs, bn_arrays, bn_node, fold_and_check, make_model, only_record, op_counts
from onnx import helper

import bnfold

F32 = np.float32


def records_by_name(records):
    return {r.name: r for r in records}


# --- 1. BN → Conv (fold forward) ----------------------------------------------------------------


def bn_conv_model(spatial=2, group=1, bias=True, pads=None, auto_pad=None, cin=4, cout=6):
    rng = np.random.default_rng(spatial + group)
    inits = {"w": rng.normal(0, 0.3, (cout, cin // group, *(3,) * spatial)).astype(F32), **bn_arrays(rng, cin)}
    conv_inputs = ["y", "w"]
    if bias:
        inits["b"] = rng.normal(0, 0.3, cout).astype(F32)
        conv_inputs.append("b")
    attrs = {"group": group}
    if pads is not None:
        attrs["pads"] = [pads] * (2 * spatial)
    if auto_pad is not None:
        attrs["auto_pad"] = auto_pad
    nodes = [bn_node("x", "y"), helper.make_node("Conv", conv_inputs, ["z"], name="conv", **attrs)]
    return make_model(nodes, [("x", F32, ["N", cin, *(7,) * spatial])], [("z", F32, None)], inits)


@pytest.mark.parametrize("spatial", [1, 2])
@pytest.mark.parametrize(("group", "cin", "cout"), [(1, 4, 6), (2, 4, 6), (4, 4, 4), (2, 4, 2)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("pads", "auto_pad"), [(None, None), (0, None), (None, "VALID")])
def test_bn_folds_forward_into_an_unpadded_conv(spatial, group, cin, cout, bias, pads, auto_pad):
    folded, records = fold_and_check(bn_conv_model(spatial, group, bias, pads, auto_pad, cin, cout))
    assert op_counts(folded) == {"Conv": 1}
    record = records_by_name(records)["bn"]
    assert (record.action, record.into, record.pattern) == ("folded", "Conv 'conv'", "forward")


@pytest.mark.parametrize(("pads", "auto_pad"), [(1, None), (None, "SAME_UPPER")])
def test_padded_conv_after_bn_keeps_the_bn_whole_with_reason_padding(pads, auto_pad):
    model = bn_conv_model(pads=pads, auto_pad=auto_pad)
    folded, records = fold_and_check(model)
    record = records_by_name(records)["bn"]
    assert record.action == "kept"
    assert record.reason == (
        "no Conv, ConvTranspose, DeformConv, Gemm or MatMul before it; "
        "padding: Conv 'conv' pads its input with zeros, which the shift would not reach"
    )
    # Its scale alone could fold into the padded Conv, leaving an Add: no fewer nodes, and slower at
    # ORT_ENABLE_ALL, where onnxruntime runs the BN inside its NCHWc layout but reorders around an Add.
    assert op_counts(folded) == op_counts(model)


def test_bn_feeding_two_convs_folds_into_both():
    rng = np.random.default_rng(9)
    inits = {
        "w1": rng.normal(size=(5, 4, 1, 1)).astype(F32),
        "w2": rng.normal(size=(3, 4, 3, 3)).astype(F32),
        **bn_arrays(rng, 4),
    }
    nodes = [
        bn_node("x", "y"),
        helper.make_node("Conv", ["y", "w1"], ["z1"], name="c1"),
        helper.make_node("Conv", ["y", "w2"], ["z2"], name="c2"),
    ]
    model = make_model(nodes, [("x", F32, ["N", 4, 6, 6])], [("z1", F32, None), ("z2", F32, None)], inits)
    folded, records = fold_and_check(model)
    assert records[0].into == "Conv 'c1', Conv 'c2'" and op_counts(folded) == {"Conv": 2}


# --- 2. BN → Gemm / MatMul (fold forward), also across Flatten / Reshape ---------------------


def bn_gemm_model(trans_b=0, alpha=1.0, beta=1.0, c_shape=(5,), trans_a=0):
    rng = np.random.default_rng(11)
    inits = {"B": rng.normal(size=(5, 4) if trans_b else (4, 5)).astype(F32), **bn_arrays(rng, 4)}
    inputs = ["y", "B"]
    if c_shape is not None:
        inits["C"] = rng.normal(size=c_shape).astype(F32)
        inputs.append("C")
    gemm = helper.make_node("Gemm", inputs, ["z"], name="fc", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    x_shape = [4, 3] if trans_a else [3, 4]
    return make_model([bn_node("x", "y"), gemm], [("x", F32, x_shape)], [("z", F32, None)], inits)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0), (-1.5, 0.0)])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (3, 5)], ids=["noC", "N", "1xN", "MxN"])
def test_bn_folds_forward_into_gemm(trans_b, alpha, beta, c_shape):
    folded, records = fold_and_check(bn_gemm_model(trans_b, alpha, beta, c_shape))
    assert op_counts(folded) == {"Gemm": 1}
    assert (records[0].into, records[0].pattern) == ("Gemm 'fc'", "forward")


def test_bn_before_gemm_with_trans_a_is_not_folded_forward():
    # BN over the 3 columns of x [4, 3]; the Gemm reads xᵀ, so the channel indexes the output's rows.
    rng = np.random.default_rng(21)
    nodes = [bn_node("x", "y"), helper.make_node("Gemm", ["y", "B"], ["z"], name="fc", transA=1)]
    model = make_model(
        nodes,
        [("x", F32, [4, 3])],
        [("z", F32, [3, 5])],
        {"B": rng.normal(size=(4, 5)).astype(F32), **bn_arrays(rng, 3)},
    )
    _, records = fold_and_check(model)
    assert records[0].action == "kept"
    assert records[0].reason.endswith("Gemm 'fc' has transA=1: the channel would index its output's rows")


def test_bn_folds_forward_into_matmul():
    rng = np.random.default_rng(12)
    nodes = [bn_node("x", "y"), helper.make_node("MatMul", ["y", "W"], ["z"], name="mm")]
    model = make_model(
        nodes,
        [("x", F32, ["N", 4])],
        [("z", F32, None)],
        {"W": rng.normal(size=(4, 5)).astype(F32), **bn_arrays(rng, 4)},
    )
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"Gemm": 1} and records[0].into == "MatMul 'mm'"


@pytest.mark.parametrize(("op", "spatial"), [("Flatten", (1, 1)), ("Flatten", (2, 3)), ("Reshape", (2, 2))])
def test_bn_folds_forward_across_flatten_into_gemm(op, spatial):
    rng = np.random.default_rng(13)
    features = 4 * int(np.prod(spatial))
    inits = {"B": rng.normal(size=(6, features)).astype(F32), "C": rng.normal(size=6).astype(F32), **bn_arrays(rng, 4)}
    if op == "Flatten":
        flatten = helper.make_node("Flatten", ["y"], ["f"], name="flat", axis=1)
    else:
        inits["shape"] = np.array([0, -1], np.int64)
        flatten = helper.make_node("Reshape", ["y", "shape"], ["f"], name="flat")
    nodes = [bn_node("x", "y"), flatten, helper.make_node("Gemm", ["f", "B", "C"], ["z"], name="fc", transB=1)]
    model = make_model(nodes, [("x", F32, [3, 4, *spatial])], [("z", F32, None)], inits)
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {op: 1, "Gemm": 1}
    assert records[0].into == f"Gemm 'fc' (through {op} 'flat')"


def test_flatten_from_another_axis_is_not_crossed():
    rng = np.random.default_rng(14)
    inits = {"B": rng.normal(size=(6, 4)).astype(F32), **bn_arrays(rng, 4)}
    nodes = [
        bn_node("x", "y"),
        helper.make_node("Flatten", ["y"], ["f"], name="flat", axis=2),
        helper.make_node("Gemm", ["f", "B"], ["z"], name="fc", transB=1),
    ]
    model = make_model(nodes, [("x", F32, [3, 4, 2, 2])], [("z", F32, None)], inits)
    _, records = fold_and_check(model)
    assert records[0].reason.endswith("Flatten 'flat' flattens from axis 2, not 1")


# --- 3. Per-channel affine chains --------------------------------------------------------------


def chain_model(chain, after_bn=(), channels=4, conv_pads=(0, 0, 0, 0)):
    """Conv → chain of (op, constant) → BN → after_bn chain; constants named c0, c1, …"""
    rng = np.random.default_rng(15)
    inits = {"w": rng.normal(size=(channels, 3, 3, 3)).astype(F32), **bn_arrays(rng, channels)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["v0"], name="conv", pads=list(conv_pads))]
    current = "v0"
    for index, (op, constant, constant_first) in enumerate([*list(chain), ("BN", None, False), *list(after_bn)]):
        out = f"v{index + 1}"
        if op == "BN":
            nodes.append(bn_node(current, out))
        else:
            inits[f"c{index}"] = constant
            inputs = [f"c{index}", current] if constant_first else [current, f"c{index}"]
            nodes.append(helper.make_node(op, inputs, [out], name=f"{op.lower()}{index}"))
        current = out
    nodes.append(helper.make_node("Identity", [current], ["z"], name="out"))
    return make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("z", F32, None)], inits)


def per_channel(values):
    return np.asarray(values, F32).reshape(-1, 1, 1)


def test_conv_mul_add_sub_div_bn_chain_folds_completely():
    chain = [
        ("Mul", per_channel([1.5, -2, 0.5, 3]), False),
        ("Add", per_channel([0.1, 0.2, -0.3, 0.4]), True),
        ("Sub", np.array(0.25, F32), False),
        ("Div", per_channel([2, 4, -1, 0.5]), False),
        ("Sub", per_channel([1, 2, 3, 4]), True),
    ]
    folded, records = fold_and_check(chain_model(chain))
    assert op_counts(folded) == {"Conv": 1, "Identity": 1}
    assert [(r.op, r.action) for r in records] == [("BatchNormalization", "folded")] + [
        (op, "folded") for op in ("Mul", "Add", "Sub", "Div", "Sub")
    ]


def test_bn_then_chain_then_conv_folds_forward():
    rng = np.random.default_rng(16)
    inits = {"w": rng.normal(size=(5, 4, 1, 1)).astype(F32), "k": per_channel([1, 2, 3, 4]), **bn_arrays(rng, 4)}
    nodes = [
        bn_node("x", "y"),
        helper.make_node("Mul", ["y", "k"], ["m"], name="mul"),
        helper.make_node("Conv", ["m", "w"], ["z"], name="conv"),
    ]
    folded, records = fold_and_check(make_model(nodes, [("x", F32, ["N", 4, 5, 5])], [("z", F32, None)], inits))
    assert op_counts(folded) == {"Conv": 1}
    assert {(r.op, r.action, r.pattern) for r in records} == {
        ("BatchNormalization", "folded", "forward"),
        ("Mul", "folded", "forward"),
    }


def test_last_axis_constant_with_w_equal_c_is_not_folded():
    """A [W] constant on NCHW broadcasts along W, even when W == C (onnxslim folds it on C)."""
    model = chain_model([("Mul", np.array([1.0, 2.0, 3.0, 4.0], F32), False)])
    folded, records = fold_and_check(model.__class__.FromString(model.SerializeToString()))
    mul = records_by_name(records)["mul0"]
    assert (mul.op, mul.action, mul.reason) == (
        "Mul",
        "skipped",
        "it runs along axis 3 of the output of Conv 'conv', whose features run along axis 1; "
        "it runs along axis 3; a consumer can take a map along axis 1 only",
    )
    assert op_counts(folded)["Mul"] >= 1


def test_division_by_a_constant_with_a_zero_is_not_folded():
    model = chain_model([("Div", per_channel([1, 0, 2, 3]), False)])
    result = bnfold.fold(model)
    assert bnfold.verify(model, result.model).passed  # Inf and NaN where the original has them
    folded, records = result.model, result.records
    div = records_by_name(records)["div0"]
    assert (div.action, div.reason) == ("skipped", "division by a constant that contains 0")
    assert op_counts(folded)["Div"] == 1


def test_constant_divided_by_x_is_not_affine():
    model = chain_model([("Div", per_channel([1, 5, 2, 3]), True)])
    _, records = fold_and_check(model)
    assert records_by_name(records)["div0"].reason == "constant / x is not affine in x"


def test_a_per_channel_mul_after_a_conv_folds_even_without_any_bn():
    rng = np.random.default_rng(17)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Mul", ["y", "k"], ["z"], name="scale"),
    ]
    model = make_model(
        nodes,
        [("x", F32, ["N", 3, 6, 6])],
        [("z", F32, None)],
        {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), "k": per_channel([1, 2, 3, 4])},
    )
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"Conv": 1}
    assert [(r.name, r.op, r.action, r.into) for r in records] == [("scale", "Mul", "folded", "Conv 'conv'")]
    folded, records = fold_and_check(model, bn_only=True)  # --bn-only: nodes away from any BN are left alone
    assert records == [] and op_counts(folded) == {"Conv": 1, "Mul": 1}


# --- 4. MatMul → Add → BN (Keras Dense with bias, then BN) -------------------------------------


def test_matmul_add_bn_becomes_one_gemm():
    rng = np.random.default_rng(18)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="dense"),
        helper.make_node("Add", ["m", "bias"], ["a"], name="dense_bias"),
        bn_node("a", "z"),
    ]
    model = make_model(
        nodes,
        [("x", F32, ["N", 6])],
        [("z", F32, None)],
        {"W": rng.normal(size=(6, 5)).astype(F32), "bias": rng.normal(size=5).astype(F32), **bn_arrays(rng, 5)},
    )
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"Gemm": 1}
    assert [(r.op, r.action, r.into) for r in records] == [
        ("BatchNormalization", "folded", "Gemm 'dense'"),
        ("Add", "folded", "MatMul 'dense'"),
    ]


# --- 5. BN after Concat of producers -----------------------------------------------------------


def concat_model(axis=1, reuse=False, second="Conv"):
    rng = np.random.default_rng(19)
    inits = {"w1": rng.normal(size=(3, 2, 3, 3)).astype(F32), **bn_arrays(rng, 8 if axis == 1 else 3)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1])]
    if second == "Conv":
        inits["w2"] = rng.normal(size=(5, 2, 1, 1)).astype(F32)
        nodes.append(helper.make_node("Conv", ["x", "w2"], ["b"], name="conv2"))
    else:
        inits["w2"] = rng.normal(size=(2, 5, 2, 2)).astype(F32)
        nodes.append(
            helper.make_node("ConvTranspose", ["x", "w2"], ["b"], name="conv2", strides=[1, 1], pads=[0, 0, 1, 1])
        )
    if axis != 1:
        inits["w2"] = rng.normal(size=(3, 2, 1, 1)).astype(F32)
    nodes += [helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=axis), bn_node("cat", "z")]
    outputs = [("z", F32, None)]
    if reuse:
        nodes.append(helper.make_node("Relu", ["a"], ["reused"], name="reuse"))
        outputs.append(("reused", F32, None))
    return make_model(nodes, [("x", F32, ["N", 2, 5, 5])], outputs, inits)


@pytest.mark.parametrize("second", ["Conv", "ConvTranspose"])
def test_bn_after_channel_concat_splits_into_the_producers(second):
    folded, records = fold_and_check(concat_model(second=second))
    assert op_counts(folded) == {
        "Conv": 1 + (second == "Conv"),
        "Concat": 1,
        **({"ConvTranspose": 1} if second != "Conv" else {}),
    }
    assert (records[0].into, records[0].pattern) == (f"Conv 'conv1'[0:3], {second} 'conv2'[3:8]", "concat")


def test_concat_input_with_a_second_consumer_blocks_the_split():
    _, records = fold_and_check(concat_model(reuse=True))
    assert records[0].reason.startswith("Concat input 'a': output of Conv 'conv1' has 2 consumers")


def test_concat_on_a_non_channel_axis_is_not_split():
    _, records = fold_and_check(concat_model(axis=2))
    assert records[0].reason.startswith("Concat 'cat' joins along axis 2, not the channel axis 1")


def test_bn_after_concat_of_gemms():
    rng = np.random.default_rng(20)
    nodes = [
        helper.make_node("Gemm", ["x", "B1"], ["a"], name="g1", transB=1),
        helper.make_node("Gemm", ["x", "B2", "C2"], ["b"], name="g2"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=-1),
        bn_node("cat", "z"),
    ]
    inits = {
        "B1": rng.normal(size=(3, 4)).astype(F32),
        "B2": rng.normal(size=(4, 2)).astype(F32),
        "C2": rng.normal(size=2).astype(F32),
        **bn_arrays(rng, 5),
    }
    folded, records = fold_and_check(make_model(nodes, [("x", F32, ["N", 4])], [("z", F32, None)], inits))
    assert records[0].into == "Gemm 'g1'[0:3], Gemm 'g2'[3:5]"
    assert op_counts(folded) == {"Gemm": 2, "Concat": 1}


# --- Acceptance: whole small nets end with no BN, Mul or Add ------------------------------------


def linear(nodes, inits, rng, x, name, fan_in, fan_out, bias=True):
    """A torch Linear as the TorchScript exporter writes it: Gemm with bias, MatMul(Transpose(W)) without."""
    inits[f"{name}.weight"] = (rng.normal(size=(fan_out, fan_in)) / np.sqrt(fan_in)).astype(F32)
    if bias:
        inits[f"{name}.bias"] = rng.normal(0, 0.1, fan_out).astype(F32)
        nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [name], name=name, transB=1))
    else:
        nodes.append(helper.make_node("Transpose", [f"{name}.weight"], [f"{name}.t"], name=f"{name}_t", perm=[1, 0]))
        nodes.append(helper.make_node("MatMul", [x, f"{name}.t"], [name], name=name))
    return name


def test_mlp_with_bn1d_everywhere_ends_with_no_bn_mul_or_add():
    """Linear → BN1d → ReLU → Linear(no bias) → BN1d → ReLU → BN1d → Linear."""
    rng = np.random.default_rng(30)
    nodes, inits = [], {}
    x = linear(nodes, inits, rng, "x", "fc1", 12, 16)
    for prefix, source in (("bn1", x),):
        inits.update(bn_arrays(rng, 16, prefix))
        nodes.append(bn_node(source, prefix, prefix))
    nodes.append(helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"))
    x = linear(nodes, inits, rng, "r1", "fc2", 16, 8, bias=False)
    inits.update(bn_arrays(rng, 8, "bn2"))
    nodes += [bn_node(x, "bn2", "bn2"), helper.make_node("Relu", ["bn2"], ["r2"], name="relu2")]
    inits.update(bn_arrays(rng, 8, "bn3"))
    nodes.append(bn_node("r2", "bn3", "bn3"))
    linear(nodes, inits, rng, "bn3", "fc3", 8, 3)
    model = make_model(nodes, [("x", F32, ["N", 12])], [("fc3", F32, None)], inits)
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"Gemm": 3, "Relu": 2}
    assert [(r.name, r.pattern) for r in records] == [("bn1", "backward"), ("bn2", "backward"), ("bn3", "forward")]


def test_conv1d_net_ending_in_bn1d_then_pointwise_conv_has_no_bn_mul_or_add():
    rng = np.random.default_rng(31)
    inits = {
        "w1": rng.normal(0, 0.3, (8, 4, 3)).astype(F32),
        "w2": rng.normal(0, 0.3, (8, 8, 3)).astype(F32),
        "head": rng.normal(0, 0.3, (5, 8, 1)).astype(F32),
        "head_b": rng.normal(0, 0.1, 5).astype(F32),
        **bn_arrays(rng, 8, "bn1"),
        **bn_arrays(rng, 8, "bn2"),
        **bn_arrays(rng, 8, "bn_head"),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1]),
        bn_node("c1", "b1", "bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1]),
        bn_node("c2", "b2", "bn2"),
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        bn_node("r2", "b3", "bn_head"),
        helper.make_node("Conv", ["b3", "head", "head_b"], ["z"], name="head"),
    ]
    model = make_model(nodes, [("x", F32, ["N", 4, 20])], [("z", F32, None)], inits)
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"Conv": 3, "Relu": 2}
    assert records[-1].into == "Conv 'head'" and records[-1].pattern == "forward"


@pytest.mark.parametrize("bias", [False, True])
def test_levit_linear_norm_folds_and_its_flatten_and_reshape_cancel(bias):
    model = levit_linear_norm_torchscript(bias=bias)
    folded, records = fold_and_check(model)  # independent comparison; onnxruntime's optimizer loses nothing
    assert only_record([r for r in records if r.op == "BatchNormalization"]).action == "folded"
    assert op_counts(folded) == {"MatMul": 1, "Add": 1}  # the Shape read only the shape; the pair undid itself


def test_a_reshape_to_another_values_shape_does_not_cancel():
    # Shape of the input, not of what the Flatten regrouped: the Reshape is no inverse of the Flatten, and the
    # BN folds as into any MatMul of rank 3 (its shift in a new bias Add). Not fold_and_check: with this graph's
    # static shapes onnxruntime makes that MatMul + Add a Reshape → Gemm → Reshape, one node more than MatMul +
    # BN (a known leftover; exporters' graphs do not have this form: see issue 20's closing note)
    model = levit_linear_norm_torchscript(restore_from="x", width=4)
    folded = bnfold.fold(model).model
    assert_same_outputs(model, folded)
    assert {"Flatten", "Reshape", "Shape"} <= set(op_counts(folded))
