"""What real exporters emit around a BN, built here the way each one emits it.

Each test builds a minimal model with the exporter's op chain (names, Identity
placement, dynamic shapes, casts, old opsets), folds it, and asserts what folded,
the nodes left, and that onnxruntime computes the same (helpers.fold_and_check).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders.exporters import (
    acnet_block,
    caffe2_dense,
    flax_linear_rank3,
    keras_dense_nhwc,
    keras_dense_rank3,
    keras_fp16,
    levit_linear_norm,
    mobileone_block,
    paddle_conv1d_linear,
    repvgg_block,
    tf2onnx_noopt,
)
from helpers import assert_same_outputs, bn_arrays, bn_node, fold_and_check, make_model, op_counts
from onnx import TensorProto, helper, numpy_helper

import bnfold

F32, F16 = np.float32, np.float16


def _records(records):
    return [(r.name, r.action, r.pattern) for r in records]


# --- Caffe2 / model zoo: opset 7-9, IR 3, weights behind ConstantOfShape, Scale as Mul/Add ---------


@pytest.mark.parametrize("opset", [7, 9])
def test_caffe2_bn_and_scale_layers_fold_into_the_conv_at_opset_7_and_9_ir_3(opset):
    model = caffe2_dense(opset)
    folded, records = fold_and_check(model)
    assert [r.action for r in records if r.op == "BatchNormalization"] == ["folded"] * 3
    assert {r.op for r in records if r.action == "folded"} == {"BatchNormalization", "Mul", "Add"}
    assert op_counts(folded) == {
        "Conv": 3,
        "Relu": 3,
        "Concat": 1,
        "GlobalAveragePool": 1,
        "Flatten": 1,
        "Gemm": 1,
        "Softmax": 1,
    }
    assert folded.ir_version == 3 and folded.opset_import[0].version == opset
    listed = {i.name for i in folded.graph.input}
    assert all(t.name in listed for t in folded.graph.initializer)  # IR 3: each initializer is an input too


# --- timm LeViT LinearNorm (torch dynamo): MatMul → Reshape[B·49, C] (shape from Shape) → BN → Reshape ---


def test_levit_linear_norm_bn_behind_a_reshape_folds_into_the_matmul():
    model = levit_linear_norm()
    folded, records = fold_and_check(model)
    (record,) = records
    assert (record.action, record.pattern) == ("folded", "backward")
    assert record.into == "MatMul 'node_linear' (through Reshape 'node_view')"
    counts = op_counts(folded)
    assert counts["BatchNormalization"] == 0 and counts["MatMul"] == 1 and counts["Add"] == 1  # the shift: a bias Add


# --- paddle2onnx: an Identity after every op, Conv1D as Unsqueeze → Conv → Squeeze --------------------


def test_paddle_identities_and_conv1d_squeeze_do_not_stop_the_fold():
    model = paddle_conv1d_linear()
    folded, records = fold_and_check(model)
    bns = {r.name: r for r in records if r.op == "BatchNormalization"}
    assert bns["BatchNormalization.0"].into == "Conv 'Conv.0' (through Squeeze 'Squeeze.1')"
    assert bns["BatchNormalization.1"].into == "Conv 'Conv.1' (through Squeeze 'Squeeze.3')"
    assert bns["BatchNormalization.2"].into == "Gemm 'MatMul.0'"
    counts = op_counts(folded)
    assert counts["BatchNormalization"] == 0 and counts["Identity"] == 1  # the graph output's stays
    assert counts["Conv"] == 2 and counts["Add"] == 0 and counts["Squeeze"] == 2


# --- jax2onnx (flax nnx.Linear on [B, T, F] + BatchNorm): Gemm → Reshape → Transpose → BN → Transpose ---


@pytest.mark.parametrize("bias", [True, False])
def test_flax_gemm_reshape_transpose_bn_folds_and_the_transposes_go(bias):
    folded, records = fold_and_check(flax_linear_rank3(bias))
    (record,) = records
    assert record.into == "Gemm 'node_Gemm_1' (through Reshape 'node_Reshape_5', Transpose 'node_Transpose_6')"
    counts = op_counts(folded)
    assert counts["BatchNormalization"] == 0 and counts["Gemm"] == 1
    # with the BN gone, the Transposes around it cancel: the Reshape now makes the graph output
    assert counts["Transpose"] == 0 and counts["Reshape"] == 2
    assert next(n for n in folded.graph.node if n.name == "node_Reshape_5").output[0] == "BatchNormOut_0"
    assert record.site == "BatchNormOut_0"


@pytest.mark.parametrize(
    ("second_perm", "also_output", "transposes"),
    [((0, 2, 1), False, 0), ((2, 0, 1), False, 2), ((0, 2, 1), True, 2)],
    ids=["cancelling", "not cancelling", "BN output also a graph output"],
)
def test_transposes_around_a_folded_bn_go_only_when_they_cancel(second_perm, also_output, transposes):
    folded, records = fold_and_check(keras_dense_rank3(second_perm, also_output))
    assert op_counts(folded)["Transpose"] == transposes
    (record,) = (r for r in records if r.op == "BatchNormalization")
    assert record.action == "folded" and record.site == ("out" if transposes == 0 else "normed")


# --- tf2onnx with optimizers off: NHWC↔NCHW Transposes around every op ------------------------------


def test_tf2onnx_cancelling_transposes_are_removed_and_the_bn_folds():
    folded, records = fold_and_check(tf2onnx_noopt())
    (record,) = records
    assert record.into == (
        "Conv 'model/conv2d/BiasAdd' (through Transpose 'model/conv2d/BiasAdd__146', "
        "Transpose 'model/bn/FusedBatchNormV3__148')"
    )
    assert op_counts(folded) == {"Transpose": 2, "Conv": 1, "Relu": 1}


# --- tf2onnx Keras Dense on NHWC: MatMul → Reshape(shape via Shape/Gather/Concat) → Add → Transpose → BN --


def test_keras_dense_on_nhwc_folds_through_the_dynamic_reshape_and_the_transpose():
    folded, records = fold_and_check(keras_dense_nhwc())
    assert [(r.name, r.action, r.into) for r in records] == [
        (
            "model/bn/FusedBatchNormV3",
            "folded",
            "Gemm 'model/dense/Tensordot/MatMul' (through Reshape 'model/dense/Tensordot', "
            "Transpose 'model/bn/FusedBatchNormV3__14')",
        ),
        (
            "model/dense/BiasAdd",
            "folded",
            "MatMul 'model/dense/Tensordot/MatMul' (through Reshape 'model/dense/Tensordot')",
        ),
    ]
    counts = op_counts(folded)
    assert counts["BatchNormalization"] == 0 and counts["Add"] == 0 and counts["Gemm"] == 1


def _untyped_rank(op_type, **attrs):
    """A model in which `op_type` reads a custom-domain op's output: shape inference knows nothing of it."""
    import onnx_ir as ir

    from bnfold.graph.value_types import ValueTypes

    nodes = [
        helper.make_node("Opaque", ["x"], ["o"], domain="custom"),
        helper.make_node(op_type, ["o", *attrs.pop("inputs", [])], ["y"], **attrs),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [
                numpy_helper.from_array(np.zeros((4, 3, 3, 3), F32), "w"),
                numpy_helper.from_array(np.array([0, 2, -1], np.int64), "shape"),
                numpy_helper.from_array(np.array([0, 3], np.int64), "axes"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
    )
    ir_model = ir.serde.deserialize_model(model)
    value = next(node for node in ir_model.graph if node.op_type == op_type).outputs[0]
    return ValueTypes(ir_model).rank(value)


@pytest.mark.parametrize(
    ("op_type", "attrs", "rank"),
    [
        ("Transpose", {"perm": [0, 3, 1, 2]}, 4),
        ("Reshape", {"inputs": ["shape"]}, 3),
        ("Conv", {"inputs": ["w"]}, 4),
        ("Unsqueeze", {"inputs": ["axes"]}, None),  # the input's rank is unknown too: nothing to add to
    ],
)
def test_ranks_come_from_the_ops_when_shape_inference_has_none(op_type, attrs, rank):
    assert _untyped_rank(op_type, **attrs) == rank


# --- Keras mixed_float16: Conv(fp16) → Cast(fp32) → BN → Cast(fp16) -----------------------------------


def _fold_file(tmp_path, model, **kwargs):
    source, target = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    report = bnfold.fold_file(source, target, **kwargs)
    return report, onnx.load(target)


def test_keras_fp16_cast_sandwich_folds_into_the_fp16_weights_when_the_check_passes(tmp_path):
    model = keras_fp16()
    report, folded = _fold_file(tmp_path, model)
    bns = [r for r in report.records if r.op == "BatchNormalization"]
    assert [(r.action, r.pattern) for r in bns] == [("folded", "cast-sandwich")] * 2
    assert bns[0].into == (
        "Conv 'model/conv2d/BiasAdd' (float16 weights; Casts "
        "'model/bn1/FusedBatchNormV3__64', 'model/bn1/castback' removed)"
    )
    assert report.check.verdict == "passed"
    assert op_counts(folded) == {"Cast": 2, "Conv": 2, "Relu": 2, "GlobalAveragePool": 1}  # the gain Mul folded too
    weights = {t.name: t.data_type for t in folded.graph.initializer}
    assert weights["w1"] == weights["w2"] == TensorProto.FLOAT16 and weights["b1"] == TensorProto.FLOAT16
    onnx.checker.check_model(folded, full_check=True)
    assert_same_outputs(model, folded, rtol=5e-3)
    assert [v.name for v in folded.graph.value_info] == [v.name for v in model.graph.value_info]


def test_a_cast_sandwich_whose_fold_fails_the_half_precision_check_is_left_as_it_was(tmp_path):
    # s = 1e-5 on weights ~0.3: the folded float16 weights are subnormal (relative precision a few %),
    # and inputs of 1e4 make those errors larger than float16's own rounding of the outputs.
    model = keras_fp16(scale_of_second=1e-5, gain=1e4)
    report, folded = _fold_file(tmp_path, model)
    first, second = [r for r in report.records if r.op == "BatchNormalization"]
    assert (first.action, first.pattern) == ("folded", "cast-sandwich")
    assert second.action == "kept"
    assert second.reason.startswith("folding it across its Casts fails the check at 'narrow2' (max abs err ")
    assert report.check.verdict == "passed"
    assert op_counts(folded)["Cast"] == 4 and op_counts(folded)["BatchNormalization"] == 1
    without_check = bnfold.fold(model, check=False)  # nothing to judge by: the fold stands (see README)
    assert [r.pattern for r in without_check.records if r.op == "BatchNormalization"] == ["cast-sandwich"] * 2
    in_memory = bnfold.fold(model)  # the API checks by default: the failing fold is backed out there too
    assert [r.action for r in in_memory.records if r.op == "BatchNormalization"] == ["folded", "kept"]
    assert in_memory.check is not None and in_memory.check.verdict == "passed"


def test_float32_to_float64_sandwich_folds_into_float32_weights():
    rng = np.random.default_rng(7)
    inits = {"w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(F32), **bn_arrays(rng, 4, dtype=np.float64)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Cast", ["c"], ["wide"], name="widen", to=TensorProto.DOUBLE),
        bn_node("wide", "bn_out"),
        helper.make_node("Cast", ["bn_out"], ["z"], name="narrow", to=TensorProto.FLOAT),
    ]
    folded, records = fold_and_check(make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("z", F32, None)], inits))
    assert [(r.action, r.pattern) for r in records] == [("folded", "cast-sandwich")]
    assert op_counts(folded) == {"Conv": 1}
    assert folded.graph.output[0].name == "z"


def test_a_narrowing_first_cast_is_no_sandwich():
    rng = np.random.default_rng(8)
    inits = {"w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(F32), **bn_arrays(rng, 4, dtype=F16)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Cast", ["c"], ["narrow"], name="narrow", to=TensorProto.FLOAT16),
        bn_node("narrow", "bn_out"),
        helper.make_node("Cast", ["bn_out"], ["z"], name="widen", to=TensorProto.FLOAT),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("z", F32, None)], inits)
    result = bnfold.fold(model)
    (record,) = result.records
    assert record.action == "kept"
    assert record.reason.startswith("no Conv, ConvTranspose, DeformConv, Gemm or MatMul before it")


# --- RepVGG / MobileOne / ACNet: branches on one input summed by Add --------------------------------


def _identity_record(records):
    return next(r for r in records if r.name == "/b1/identity/BatchNormalization")


def _assert_one_conv(folded, records, branches):
    assert op_counts(folded) == {"Conv": 1, "Relu": 1}
    assert all(r.action == "folded" for r in records) and len(records) == branches
    conv = folded.graph.node[0]
    assert conv.name == "/b1/conv_kxk/conv/Conv"


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_repvgg_block_becomes_one_conv(groups, rank):
    folded, records = fold_and_check(repvgg_block(groups=groups, rank=rank))
    _assert_one_conv(folded, records, 3)
    identity = _identity_record(records)
    assert (identity.into, identity.pattern) == ("Conv '/b1/conv_kxk/conv/Conv' (identity branch)", "reparameterized")
    one_by_one = next(r for r in records if r.name == "/b1/conv_1x1/bn/BatchNormalization")
    assert one_by_one.into == "Conv '/b1/conv_1x1/conv/Conv', merged into Conv '/b1/conv_kxk/conv/Conv'"


@pytest.mark.parametrize(("kernel", "dilation"), [(5, 1), (3, 2)])
def test_repvgg_with_larger_or_dilated_kernels(kernel, dilation):
    folded, records = fold_and_check(repvgg_block(kernel=kernel, dilation=dilation))
    _assert_one_conv(folded, records, 3)


def test_repvgg_stride_2_block_without_identity_merges_its_two_convs():
    folded, records = fold_and_check(repvgg_block(stride=2, identity=False, out_channels=6))
    _assert_one_conv(folded, records, 2)


def test_an_identity_branch_beside_a_stride_2_conv_cannot_merge_and_says_why():
    folded, records = fold_and_check(repvgg_block(stride=2, spatial=1))  # 1×1 in, 1×1 out: a valid sum
    identity = _identity_record(records)
    assert identity.action == "kept"
    assert identity.reason.endswith(
        "its branch cannot merge with the others: the identity branch needs stride 1, "
        "Conv '/b1/conv_1x1/conv/Conv' has strides [2, 2]"
    )
    assert op_counts(folded) == {"Conv": 2, "Add": 2, "BatchNormalization": 1, "Relu": 1}


def test_an_identity_branch_needs_as_many_output_as_input_channels():
    rng = np.random.default_rng(15)  # Add broadcasts the one input channel over the Conv's four
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "x"], ["z"], name="residual"),
    ]
    model = make_model(
        nodes, [("x", F32, ["N", 1, 6, 6])], [("z", F32, None)], {"w": rng.normal(0, 0.3, (4, 1, 3, 3)).astype(F32)}
    )
    folded, _ = fold_and_check(model)
    assert op_counts(folded) == {"Conv": 1, "Add": 1}


def test_a_branch_padded_by_auto_pad_same_stays_apart_and_says_why():
    model = repvgg_block(kxk_attrs={"auto_pad": "SAME_UPPER", "pads": None})
    folded, records = fold_and_check(model)
    assert _identity_record(records).reason.endswith(
        "its branch cannot merge with the others: Conv '/b1/conv_kxk/conv/Conv' pads by auto_pad SAME_UPPER"
    )
    assert op_counts(folded) == {"Conv": 2, "Add": 2, "BatchNormalization": 1, "Relu": 1}


def test_branches_whose_output_sizes_differ_for_some_input_size_stay_apart():
    # stride 2, 3×3 padded (1, 0) against an unpadded 1×1: the same 4 outputs for 8 inputs, not for 9
    model = repvgg_block(stride=2, identity=False, kxk_attrs={"pads": [1, 1, 0, 0]}, spatial=8)
    folded, _ = fold_and_check(model)
    assert op_counts(folded) == {"Conv": 2, "Add": 1, "Relu": 1}


def test_an_off_centre_small_kernel_lands_where_its_pads_put_it():
    # 3×3 padded (2, 0): output o reads rows o-2 … o, the 1×1 reads row o: its tap is the last one
    model = repvgg_block(identity=False, kxk_attrs={"pads": [2, 2, 0, 0]})
    folded, records = fold_and_check(model)
    _assert_one_conv(folded, records, 2)


def test_acnet_asymmetric_branches_merge_into_the_square_kernel():
    folded, records = fold_and_check(acnet_block([(3, 3), (1, 3), (3, 1)]))
    assert op_counts(folded) == {"Conv": 1} and all(r.action == "folded" for r in records)


def test_branches_no_kernel_of_which_covers_the_others_are_not_merged():
    folded, _ = fold_and_check(acnet_block([(1, 3), (3, 1)]))
    assert op_counts(folded) == {"Conv": 2, "Sum": 1}  # a 3×3 would cost more than 1×3 + 3×1


def test_a_plain_residual_conv_plus_input_becomes_one_conv():
    rng = np.random.default_rng(9)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], group=2),
        helper.make_node("Add", ["c", "x"], ["z"], name="residual"),
    ]
    inits = {"w": rng.normal(0, 0.3, (4, 2, 3, 3)).astype(F32), "b": rng.normal(0, 0.1, 4).astype(F32)}
    folded, records = fold_and_check(make_model(nodes, [("x", F32, ["N", 4, 6, 6])], [("z", F32, None)], inits))
    assert op_counts(folded) == {"Conv": 1} and records == []
    assert folded.graph.node[0].output[0] == "z"


def test_mobileone_depthwise_block_becomes_one_conv():
    folded, records = fold_and_check(mobileone_block())
    assert op_counts(folded) == {"Conv": 1, "Relu": 1}
    assert all(r.action == "folded" for r in records if r.op == "BatchNormalization")
    assert next(r.pattern for r in records if r.op == "BatchNormalization") == "reparameterized"


# --- Transparent nodes in both directions ---------------------------------------------------------


@pytest.mark.parametrize("between", ["Identity", "Dropout", "Cast"])
def test_transparent_nodes_are_looked_through_backward_and_forward(between):
    rng = np.random.default_rng(11)
    attrs = {"to": TensorProto.FLOAT} if between == "Cast" else {}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
        helper.make_node(between, ["c"], ["t1"], name="before", **attrs),
        bn_node("t1", "b", prefix="bn1"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        bn_node("r", "b2", prefix="bn2"),
        helper.make_node(between, ["b2"], ["t2"], name="after", **attrs),
        helper.make_node("Conv", ["t2", "w2"], ["z"], name="conv2"),
    ]
    inits = {
        "w1": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(F32),
        "w2": rng.normal(0, 0.3, (5, 4, 1, 1)).astype(F32),
        **bn_arrays(rng, 4, prefix="bn1"),
        **bn_arrays(rng, 4, prefix="bn2"),
    }
    folded, records = fold_and_check(make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("z", F32, None)], inits))
    assert [(r.name, r.action, r.into, r.pattern) for r in records] == [
        ("bn1", "folded", "Conv 'conv1'", "backward"),
        ("bn2", "folded", "Conv 'conv2'", "forward"),
    ]
    assert op_counts(folded)["BatchNormalization"] == 0 and op_counts(folded)[between] == 1  # "before" went


def test_dropout_in_training_mode_is_not_transparent():
    rng = np.random.default_rng(12)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Dropout", ["c", "ratio", "training"], ["d"], name="dropout"),
        bn_node("d", "z"),
    ]
    inits = {
        "w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(F32),
        "ratio": np.array(0.0, F32),
        "training": np.array(True),
        **bn_arrays(rng, 4),
    }
    result = bnfold.fold(make_model(nodes, [("x", F32, ["N", 3, 6, 6])], [("z", F32, None)], inits))
    (record,) = result.records
    assert record.action == "kept" and record.reason.startswith(
        "no Conv, ConvTranspose, DeformConv, Gemm or MatMul before it"
    )


# --- Refusals through layout ops ------------------------------------------------------------------


def test_a_transpose_that_moves_the_channel_off_the_features_is_refused_with_the_axis():
    rng = np.random.default_rng(13)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="dense"),
        helper.make_node("Transpose", ["m"], ["t"], name="swap", perm=[0, 2, 1, 3]),
        bn_node("t", "z"),
    ]
    inits = {"W": rng.normal(0, 0.3, (6, 5)).astype(F32), **bn_arrays(rng, 7)}
    result = bnfold.fold(make_model(nodes, [("x", F32, ["N", 3, 7, 6])], [("z", F32, None)], inits))
    (record,) = result.records
    assert record.action == "kept"
    assert record.reason.startswith(
        "it runs along axis 2 of the output of MatMul 'dense', whose features run along axis 3"
    )


def test_a_reshape_that_splits_the_channel_is_refused():
    rng = np.random.default_rng(14)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="split"),
        bn_node("r", "z"),
    ]
    inits = {
        "w": rng.normal(0, 0.3, (8, 3, 1, 1)).astype(F32),
        "shape": np.array([2, 4, 2, 6, 6], np.int64),
        **bn_arrays(rng, 4),
    }
    result = bnfold.fold(make_model(nodes, [("x", F32, [2, 3, 6, 6])], [("z", F32, None)], inits))
    (record,) = result.records
    assert record.action == "kept"
    assert record.reason.startswith("Reshape 'split' does not provably keep the channel axis as one axis")
