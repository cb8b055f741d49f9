"""Each fold rule on tiny graphs, checked against the original on onnxruntime (optimizations off)."""

import numpy as np
import pytest
from helpers import bn_arrays, bn_node, fold_and_check, make_model, only_record, op_counts
from onnx import helper

import bnfold

F32 = np.float32


def conv_bn_model(spatial, group, bias, dtype=F32, cin=4, cout=6, conv_attrs=None, op="Conv"):
    rng = np.random.default_rng(spatial * 10 + group)
    kernel = (3,) * spatial
    if op == "Conv":
        weight = rng.normal(0, 0.3, (cout, cin // group, *kernel))
    else:
        weight = rng.normal(0, 0.3, (cin, cout // group, *kernel))
    inits = {"w": weight.astype(dtype), **bn_arrays(rng, cout, dtype=dtype)}
    inputs = ["x", "w"]
    if bias:
        inits["b"] = rng.normal(0, 0.3, cout).astype(dtype)
        inputs.append("b")
    nodes = [helper.make_node(op, inputs, ["y"], name="producer", group=group, **(conv_attrs or {})), bn_node("y", "z")]
    size = (7,) * spatial
    return make_model(nodes, [("x", dtype, ["N", cin, *size])], [("z", dtype, None)], inits)


CONV_ATTRS = [
    {},
    {"pads": "same", "strides": 2},
    {"dilations": 2},
]


def _expand(attrs, spatial):
    expanded = {}
    for key, value in attrs.items():
        if key == "pads":
            expanded[key] = [1] * (2 * spatial)
        else:
            expanded[key] = [value] * spatial
    return expanded


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize("group", [1, 2, "depthwise"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("attrs", CONV_ATTRS, ids=["plain", "pad-stride", "dilation"])
def test_conv_bn_folds(spatial, group, bias, attrs):
    cin, cout = (4, 4) if group == "depthwise" else (4, 6)
    group = 4 if group == "depthwise" else group
    model = conv_bn_model(spatial, group, bias, cin=cin, cout=cout, conv_attrs=_expand(attrs, spatial))
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"Conv": 1}
    record = only_record(records)
    assert (record.action, record.into) == ("folded", "Conv 'producer'")
    assert folded.graph.output[0].name == "z"


@pytest.mark.parametrize("spatial", [1, 2])
@pytest.mark.parametrize(("group", "cin", "cout"), [(1, 4, 6), (2, 4, 6), (4, 4, 8), (4, 8, 4), (3, 6, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_bn_folds(spatial, group, cin, cout, bias):
    model = conv_bn_model(
        spatial, group, bias, cin=cin, cout=cout, op="ConvTranspose", conv_attrs={"strides": [2] * spatial}
    )
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"ConvTranspose": 1}
    assert only_record(records).into == "ConvTranspose 'producer'"


def gemm_bn_model(trans_a, trans_b, alpha, beta, c_shape, dtype=F32, m=3, k=4, n=5):
    rng = np.random.default_rng(3)
    inits = {"B": rng.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(dtype), **bn_arrays(rng, n, dtype=dtype)}
    inputs = ["A", "B"]
    if c_shape is not None:
        inits["C"] = rng.normal(0, 0.5, c_shape).astype(dtype)
        inputs.append("C")
    gemm = helper.make_node(
        "Gemm", inputs, ["y"], name="gemm", transA=int(trans_a), transB=int(trans_b), alpha=alpha, beta=beta
    )
    a_shape = [k, m] if trans_a else [m, k]
    return make_model([gemm, bn_node("y", "z")], [("A", dtype, a_shape)], [("z", dtype, [m, n])], inits)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0), (-2.0, 0.25)])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (), (3, 5)], ids=["noC", "N", "1xN", "scalar", "MxN"])
def test_gemm_bn_folds(trans_a, trans_b, alpha, beta, c_shape):
    folded, records = fold_and_check(gemm_bn_model(trans_a, trans_b, alpha, beta, c_shape))
    assert op_counts(folded) == {"Gemm": 1}
    assert only_record(records).into == "Gemm 'gemm'"
    attrs = {a.name: helper.get_attribute_value(a) for a in folded.graph.node[0].attribute}
    assert attrs["alpha"] == pytest.approx(alpha) and attrs["beta"] == 1.0
    assert (attrs["transA"], attrs["transB"]) == (trans_a, trans_b)


def matmul_bn_model(a_shape, dtype=F32, n=5):
    rng = np.random.default_rng(4)
    inits = {
        "W": rng.normal(0, 0.5, (a_shape[-1], n)).astype(dtype),
        **bn_arrays(rng, a_shape[1] if len(a_shape) > 2 else n, dtype=dtype),
    }
    nodes = [helper.make_node("MatMul", ["A", "W"], ["y"], name="mm"), bn_node("y", "z")]
    return make_model(nodes, [("A", dtype, a_shape)], [("z", dtype, None)], inits)


def test_matmul_2d_becomes_gemm():
    folded, records = fold_and_check(matmul_bn_model(["N", 4]))
    assert op_counts(folded) == {"Gemm": 1}
    assert only_record(records).into == "MatMul 'mm'"
    assert folded.graph.node[0].name == "mm"


def test_matmul_rank3_keeps_its_bn_with_reason():
    model = matmul_bn_model(["N", 3, 4])
    folded, records = fold_and_check(model)
    assert folded == model  # kept as it was: one BN is one pass
    record = only_record(records)
    assert (record.action, record.into) == ("kept", "BatchNormalization")
    assert record.reason == (
        "it runs along axis 1 of the output of MatMul 'mm', whose features run along axis 2"
        "; its output is a graph output"
    )


def test_conv_bn_bn_chain_folds_both():
    rng = np.random.default_rng(5)
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), **bn_arrays(rng, 4, "bn1"), **bn_arrays(rng, 4, "bn2")}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        bn_node("y", "y1", "bn1"),
        bn_node("y1", "z", "bn2"),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("z", F32, None)], inits)
    folded, records = fold_and_check(model)
    assert op_counts(folded) == {"Conv": 1}
    assert [r.action for r in records] == ["folded", "folded"]


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_standalone_bn_stays_one_node_by_default(rank):
    rng = np.random.default_rng(rank)
    model = make_model(
        [bn_node("x", "z")], [("x", F32, ["N", 3] + [4] * (rank - 2))], [("z", F32, None)], bn_arrays(rng, 3)
    )
    folded, records = fold_and_check(model)
    assert folded == model
    record = only_record(records)
    assert (record.action, record.into, record.pattern) == ("kept", "BatchNormalization", None)
    assert record.reason == "no Conv, ConvTranspose, DeformConv, Gemm or MatMul before it; its output is a graph output"


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_standalone_mul_add_rewrites_it(rank):
    rng = np.random.default_rng(rank)
    shape = ["N", 3] + [4] * (rank - 2)
    model = make_model([bn_node("x", "z")], [("x", F32, shape)], [("z", F32, None)], bn_arrays(rng, 3))
    folded, records = fold_and_check(model, standalone="mul-add")
    assert op_counts(folded) == {"Mul": 1, "Add": 1}
    record = only_record(records)
    assert (record.action, record.into, record.pattern) == ("converted", "Mul+Add", "mul-add")
    assert record.reason == "no Conv, ConvTranspose, DeformConv, Gemm or MatMul before it; its output is a graph output"
    scale = next(i for i in folded.graph.initializer if i.name.endswith("_scale"))
    assert list(scale.dims) == [3] + [1] * (rank - 2)


def test_an_unknown_standalone_form_is_refused():
    with pytest.raises(bnfold.InputError, match="standalone must be one of bn, mul-add, not 'keep'"):
        bnfold.fold(conv_bn_model(1, 1, True), standalone="keep")


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("bias", [True, False])
def test_fp16_conv_folds_and_keeps_dtype(op, bias):
    model = conv_bn_model(2, 2, bias, dtype=np.float16, op=op)
    folded, _ = fold_and_check(model, rtol=8e-3)
    weights = {i.name: i for i in folded.graph.initializer}
    assert all(w.data_type == helper.np_dtype_to_tensor_dtype(np.dtype(np.float16)) for w in weights.values())
    assert op_counts(folded) == {op: 1}


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float16, 8e-3), (np.float64, 1e-12)])
def test_gemm_and_matmul_fold_in_other_dtypes(dtype, rtol):
    folded, _ = fold_and_check(gemm_bn_model(0, 1, 0.5, 2.0, (5,), dtype=dtype), rtol=rtol)
    assert op_counts(folded) == {"Gemm": 1}
    folded, _ = fold_and_check(matmul_bn_model(["N", 4], dtype=dtype), rtol=rtol)
    assert op_counts(folded) == {"Gemm": 1}


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float16, 8e-3), (np.float64, 1e-12)])
def test_standalone_in_other_dtypes(dtype, rtol):
    rng = np.random.default_rng(0)
    model = make_model(
        [bn_node("x", "z")], [("x", dtype, ["N", 3, 4])], [("z", dtype, None)], bn_arrays(rng, 3, dtype=dtype)
    )
    folded, _ = fold_and_check(model, rtol=rtol, standalone="mul-add")
    assert op_counts(folded) == {"Mul": 1, "Add": 1}


def test_fp16_data_with_fp32_bn_parameters_opset15():
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float16), **bn_arrays(rng, 4, dtype=F32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), bn_node("y", "z")]
    model = make_model(nodes, [("x", np.float16, ["N", 3, 6, 6])], [("z", np.float16, None)], inits, opset=15)
    folded, _ = fold_and_check(model, rtol=8e-3)
    assert {i.data_type for i in folded.graph.initializer} == {helper.np_dtype_to_tensor_dtype(np.dtype(np.float16))}
