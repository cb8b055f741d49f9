"""Models built the way each exporter emits them around a BN (tf2onnx, Caffe2, paddle2onnx, flax,
timm's RepVGG/ACNet/MobileOne blocks, TorchScript LeViT), for the tests that fold or screen them."""

from __future__ import annotations

import numpy as np
from helpers import bn_arrays, bn_node, make_model
from onnx import TensorProto, helper, numpy_helper

F32, F16 = np.float32, np.float16


def _const(name, values, dtype=np.int64):
    return helper.make_node(
        "Constant", [], [name], name=f"{name}_c", value=numpy_helper.from_array(np.asarray(values, dtype=dtype), name)
    )


def caffe2_dense(opset):
    """Three Conv → BN(γ=1, β=0) → Mul(Unsqueeze(s)) → Add(Unsqueeze(t)) → Relu blocks, DenseNet Concat.

    IR 3: every initializer is a graph input too; nodes unnamed. The Conv weights are
    ConstantOfShape(shape) · R (opset 9) or Constant · R (opset 7, before ConstantOfShape).
    """
    rng = np.random.default_rng(opset)
    nodes, inits = [], {}
    for i, (source, cin) in enumerate([("data", 3), ("relu1", 4), ("concat1", 8)], start=1):
        if opset >= 9:
            inits[f"w{i}_shape"] = np.array([4, cin, 3, 3], np.int64)
            nodes.append(
                helper.make_node(
                    "ConstantOfShape",
                    [f"w{i}_shape"],
                    [f"w{i}_base"],
                    value=numpy_helper.from_array(np.array([0.05], F32), "value"),
                )
            )
        else:
            nodes.append(
                helper.make_node(
                    "Constant", [], [f"w{i}_base"], value=numpy_helper.from_array(np.array(0.05, F32), "value")
                )
            )
        inits[f"w{i}_rand"] = rng.normal(0, 4, (4, cin, 3, 3)).astype(F32)
        inits[f"b{i}"] = rng.normal(0, 0.1, 4).astype(F32)
        params = bn_arrays(rng, 4, prefix=f"bn{i}")
        params[f"bn{i}.scale"], params[f"bn{i}.bias"] = np.ones(4, F32), np.zeros(4, F32)
        inits.update(params)
        inits[f"s{i}"], inits[f"t{i}"] = rng.normal(1, 0.3, 4).astype(F32), rng.normal(0, 0.3, 4).astype(F32)
        nodes += [
            helper.make_node("Mul", [f"w{i}_base", f"w{i}_rand"], [f"w{i}"]),
            helper.make_node("Conv", [source, f"w{i}", f"b{i}"], [f"conv{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            bn_node(f"conv{i}", f"bn{i}", prefix=f"bn{i}", name="", epsilon=1e-5, is_test=1)
            if opset < 7
            else bn_node(f"conv{i}", f"bn{i}", prefix=f"bn{i}", name="", epsilon=1e-5),
            helper.make_node("Unsqueeze", [f"s{i}"], [f"s{i}_u"], axes=[1, 2]),
            helper.make_node("Mul", [f"bn{i}", f"s{i}_u"], [f"scale{i}_mul"]),
            helper.make_node("Unsqueeze", [f"t{i}"], [f"t{i}_u"], axes=[1, 2]),
            helper.make_node("Add", [f"scale{i}_mul", f"t{i}_u"], [f"scale{i}"]),
            helper.make_node("Relu", [f"scale{i}"], [f"relu{i}"]),
        ]
        if i == 2:
            nodes.append(helper.make_node("Concat", ["relu1", "relu2"], ["concat1"], axis=1))
    inits["fc_w"], inits["fc_b"] = rng.normal(0, 0.3, (5, 4)).astype(F32), rng.normal(0, 0.1, 5).astype(F32)
    nodes += [
        helper.make_node("GlobalAveragePool", ["relu3"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], transB=1),
        helper.make_node("Softmax", ["fc"], ["prob"], axis=1),
    ]
    inputs = [("data", F32, [1, 3, 8, 8])] + [(k, v.dtype, list(v.shape)) for k, v in inits.items()]
    return make_model(nodes, inputs, [("prob", F32, [1, 5])], inits, opset=opset, ir_version=3)


def levit_linear_norm():
    rng = np.random.default_rng(1)
    inits = {"ln.linear.weight": rng.normal(0, 0.3, (8, 6)).astype(F32), **bn_arrays(rng, 8, prefix="ln.bn")}
    nodes = [
        helper.make_node("Shape", ["input"], ["val_0"], name="node_Shape_0", start=0, end=1),
        helper.make_node("Squeeze", ["val_0"], ["sym_size_int_1"], name="node_sym_size_int_1"),
        helper.make_node("Transpose", ["ln.linear.weight"], ["val_1"], name="node_Transpose_1", perm=[1, 0]),
        helper.make_node("MatMul", ["input", "val_1"], ["linear"], name="node_linear"),
        _const("val_2", 5),
        helper.make_node("Mul", ["sym_size_int_1", "val_2"], ["mul"], name="node_mul"),
        _const("val_3", [-1]),
        helper.make_node("Reshape", ["mul", "val_3"], ["val_4"], name="node_Reshape_4"),
        _const("val_5", [8]),
        helper.make_node("Concat", ["val_4", "val_5"], ["val_6"], name="node_Concat_6", axis=0),
        helper.make_node("Reshape", ["linear", "val_6"], ["view"], name="node_view", allowzero=1),
        helper.make_node(
            "BatchNormalization",
            ["view", "ln.bn.scale", "ln.bn.bias", "ln.bn.mean", "ln.bn.var"],
            ["getitem"],
            name="node__native_batch_norm_legit_no_training__0",
        ),
        helper.make_node("Reshape", ["sym_size_int_1", "val_3"], ["val_16"], name="node_Reshape_16"),
        _const("val_17", [5]),
        helper.make_node("Concat", ["val_16", "val_17", "val_5"], ["val_19"], name="node_Concat_19", axis=0),
        helper.make_node("Reshape", ["getitem", "val_19"], ["view_1"], name="node_view_1", allowzero=1),
        helper.make_node("HardSwish", ["view_1"], ["output"], name="n0"),
    ]
    return make_model(nodes, [("input", F32, ["batch", 5, 6])], [("output", F32, ["batch", 5, 8])], inits, opset=18)


def paddle_conv1d_linear():
    rng = np.random.default_rng(2)
    inits = {
        "conv_w": rng.normal(0, 0.3, (4, 3, 1, 5)).astype(F32),
        "conv_b": rng.normal(0, 0.1, (1, 4, 1, 1)).astype(F32),
        "conv2_w": rng.normal(0, 0.3, (4, 4, 1, 3)).astype(F32),
        "axes2": np.array([2], np.int64),
        "lin_w": rng.normal(0, 0.3, (4 * 5, 5)).astype(F32),
        "lin_b": rng.normal(0, 0.1, 5).astype(F32),
        "flat_shape": np.array([0, -1], np.int64),
        **bn_arrays(rng, 4, prefix="bn0"),
        **bn_arrays(rng, 4, prefix="bn1"),
        **bn_arrays(rng, 5, prefix="bn2"),
    }
    nodes = [
        helper.make_node("Unsqueeze", ["input", "axes2"], ["u0"], name="Unsqueeze.2"),
        helper.make_node("Conv", ["u0", "conv_w"], ["c0"], name="Conv.0", kernel_shape=[1, 5]),
        helper.make_node("Add", ["c0", "conv_b"], ["Add.3"], name="Add.2"),
        helper.make_node("Identity", ["Add.3"], ["add0"], name="Identity.1"),
        helper.make_node("Squeeze", ["add0", "axes2"], ["sq0"], name="Squeeze.1"),
        bn_node("sq0", "bn0_out", prefix="bn0", name="BatchNormalization.0"),
        helper.make_node("Relu", ["bn0_out"], ["r0"], name="Relu.0"),
        helper.make_node("Unsqueeze", ["r0", "axes2"], ["u1"], name="Unsqueeze.5"),
        helper.make_node("Conv", ["u1", "conv2_w"], ["c1"], name="Conv.1", kernel_shape=[1, 3], strides=[1, 2]),
        helper.make_node("Squeeze", ["c1", "axes2"], ["sq1"], name="Squeeze.3"),
        bn_node("sq1", "bn1_out", prefix="bn1", name="BatchNormalization.1"),
        helper.make_node("Relu", ["bn1_out"], ["r1"], name="Relu.1"),
        helper.make_node("Reshape", ["r1", "flat_shape"], ["flat"], name="Reshape.1"),
        helper.make_node("MatMul", ["flat", "lin_w"], ["mm"], name="MatMul.0"),
        helper.make_node("Add", ["mm", "lin_b"], ["Add.7"], name="Add.6"),
        helper.make_node("Identity", ["Add.7"], ["add1"], name="Identity.4"),
        bn_node("add1", "bn2_out", prefix="bn2", name="BatchNormalization.2"),
        helper.make_node("Relu", ["bn2_out"], ["r2"], name="Relu.2"),
        helper.make_node("Identity", ["r2"], ["fetch_name_0"], name="Identity.5"),
    ]
    return make_model(nodes, [("input", F32, ["N", 3, 16])], [("fetch_name_0", F32, ["N", 5])], inits, opset=13)


def flax_linear_rank3(bias=True):
    rng = np.random.default_rng(3)
    inits = {
        "x2d_shape": np.array([-1, 6], np.int64),
        "const_0": rng.normal(0, 0.3, (6, 8)).astype(F32),
        "const_1": rng.normal(0, 0.1, 8).astype(F32),
        "starts": np.array([0], np.int64),
        "ends": np.array([2], np.int64),
        "out_features": np.array([8], np.int64),
        **bn_arrays(rng, 8),
    }
    gemm_inputs = ["input_reshape_0", "const_0"] + (["const_1"] if bias else [])
    nodes = [
        helper.make_node("Reshape", ["input", "x2d_shape"], ["input_reshape_0"], name="node_Reshape_0"),
        helper.make_node(
            "Gemm", gemm_inputs, ["gemm_output_0"], name="node_Gemm_1", alpha=1.0, beta=1.0 if bias else 0.0
        ),
        helper.make_node("Shape", ["input"], ["x_shape_0"], name="node_Shape_2"),
        helper.make_node("Slice", ["x_shape_0", "starts", "ends"], ["batch_dims_0"], name="node_Slice_3"),
        helper.make_node("Concat", ["batch_dims_0", "out_features"], ["final_shape_0"], name="node_Concat_4", axis=0),
        helper.make_node("Reshape", ["gemm_output_0", "final_shape_0"], ["out_0"], name="node_Reshape_5"),
        helper.make_node("Transpose", ["out_0"], ["bn_pre_transpose_0"], name="node_Transpose_6", perm=[0, 2, 1]),
        bn_node("bn_pre_transpose_0", "BatchNormalization_0", name="node_BatchNormalization_7"),
        helper.make_node(
            "Transpose", ["BatchNormalization_0"], ["BatchNormOut_0"], name="node_Transpose_8", perm=[0, 2, 1]
        ),
    ]
    return make_model(nodes, [("input", F32, ["B", 10, 6])], [("BatchNormOut_0", F32, ["B", 10, 8])], inits, opset=17)


def keras_dense_rank3(second_perm=(0, 2, 1), also_output=False):
    """tf2onnx: Keras Dense on [B, T, F], then BatchNormalization(axis=-1) between two Transposes."""
    rng = np.random.default_rng(31)
    inits = {"kernel": rng.normal(0, 0.3, (6, 8)).astype(F32), "bias": rng.normal(0, 0.1, 8).astype(F32)}
    inits.update(bn_arrays(rng, 8))
    nodes = [
        helper.make_node("MatMul", ["input", "kernel"], ["mm"], name="dense/MatMul"),
        helper.make_node("Add", ["mm", "bias"], ["dense"], name="dense/BiasAdd"),
        helper.make_node("Transpose", ["dense"], ["nct"], name="bn/transpose_in", perm=[0, 2, 1]),
        bn_node("nct", "normed", name="bn/FusedBatchNormV3"),
        helper.make_node("Transpose", ["normed"], ["out"], name="bn/transpose_out", perm=list(second_perm)),
    ]
    outputs = [("out", F32, None)] + ([("normed", F32, None)] if also_output else [])
    return make_model(nodes, [("input", F32, ["B", 5, 6])], outputs, inits, opset=15)


def tf2onnx_noopt():
    rng = np.random.default_rng(4)
    inits = {
        "w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(F32),
        "b": rng.normal(0, 0.1, 4).astype(F32),
        **bn_arrays(rng, 4),
    }
    nodes = [
        helper.make_node("Transpose", ["input"], ["t0"], name="model/conv2d/BiasAdd__144", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t0", "w", "b"], ["c"], name="model/conv2d/BiasAdd", kernel_shape=[3, 3]),
        helper.make_node("Transpose", ["c"], ["t1"], name="model/conv2d/BiasAdd__146", perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], name="model/bn/FusedBatchNormV3__148", perm=[0, 3, 1, 2]),
        bn_node("t2", "bn_out", name="model/bn/FusedBatchNormV3", epsilon=1e-3),
        helper.make_node("Transpose", ["bn_out"], ["t3"], name="model/bn/FusedBatchNormV3__150", perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["t3"], ["output"], name="model/re_lu/Relu"),
    ]
    return make_model(nodes, [("input", F32, ["N", 7, 7, 3])], [("output", F32, ["N", 5, 5, 4])], inits, opset=13)


def keras_dense_nhwc():
    rng = np.random.default_rng(5)
    inits = {
        "reshape_in": np.array([-1, 4], np.int64),
        "W": rng.normal(0, 0.3, (4, 6)).astype(F32),
        "bias": rng.normal(0, 0.1, 6).astype(F32),
        "free": np.array([0, 1, 2], np.int64),
        "const_2": np.array([6], np.int32),
        **bn_arrays(rng, 6),
    }
    nodes = [
        helper.make_node("Shape", ["input"], ["shape"], name="model/dense/Tensordot/Shape"),
        helper.make_node("Cast", ["shape"], ["shape32"], name="model/dense/Tensordot/Shape__6", to=6),
        helper.make_node("Gather", ["shape32", "free"], ["gathered"], name="model/dense/Tensordot/GatherV2", axis=0),
        helper.make_node("Concat", ["gathered", "const_2"], ["concat"], name="model/dense/Tensordot/concat_1", axis=0),
        helper.make_node("Cast", ["concat"], ["out_shape"], name="model/dense/Tensordot__13", to=7),
        helper.make_node("Reshape", ["input", "reshape_in"], ["flat"], name="model/dense/Tensordot/Reshape"),
        helper.make_node("MatMul", ["flat", "W"], ["mm"], name="model/dense/Tensordot/MatMul"),
        helper.make_node("Reshape", ["mm", "out_shape"], ["td"], name="model/dense/Tensordot"),
        helper.make_node("Add", ["td", "bias"], ["biased"], name="model/dense/BiasAdd"),
        helper.make_node("Transpose", ["biased"], ["nchw"], name="model/bn/FusedBatchNormV3__14", perm=[0, 3, 1, 2]),
        bn_node("nchw", "bn_out", name="model/bn/FusedBatchNormV3", epsilon=1e-3),
        helper.make_node("Relu", ["bn_out"], ["output"], name="model/re_lu/Relu"),
    ]
    return make_model(nodes, [("input", F32, ["N", 3, 3, 4])], [("output", F32, ["N", 6, 3, 3])], inits, opset=15)


def keras_fp16(scale_of_second=None, gain=1.0):
    """Two Conv(fp16) → Cast → BN (fp32) → Cast → Relu blocks; the input is multiplied by `gain` first."""
    rng = np.random.default_rng(6)
    inits = {
        "w1": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(F16),
        "b1": rng.normal(0, 0.1, 4).astype(F16),
        "w2": rng.normal(0, 0.3, (4, 4, 3, 3)).astype(F16),
        "gain": np.array(gain, F16),
        **bn_arrays(rng, 4, prefix="bn1"),
        **bn_arrays(rng, 4, prefix="bn2"),
    }
    if scale_of_second is not None:
        inits["bn2.scale"] = np.full(4, scale_of_second, F32)
    nodes = [
        helper.make_node("Cast", ["input"], ["x16"], name="model/Cast", to=TensorProto.FLOAT16),
        helper.make_node("Mul", ["x16", "gain"], ["xg"], name="model/gain"),
        helper.make_node(
            "Conv", ["xg", "w1", "b1"], ["c1"], name="model/conv2d/BiasAdd", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
    ]
    for i, source in ((1, "c1"), (2, "c2")):
        if i == 2:
            nodes.append(
                helper.make_node("Conv", ["r1", "w2"], ["c2"], name="model/conv2d_1/Conv2D", kernel_shape=[3, 3])
            )
        nodes += [
            helper.make_node(
                "Cast", [source], [f"wide{i}"], name=f"model/bn{i}/FusedBatchNormV3__64", to=TensorProto.FLOAT
            ),
            bn_node(f"wide{i}", f"bn{i}_out", prefix=f"bn{i}", name=f"model/bn{i}/FusedBatchNormV3", epsilon=1e-3),
            helper.make_node(
                "Cast", [f"bn{i}_out"], [f"narrow{i}"], name=f"model/bn{i}/castback", to=TensorProto.FLOAT16
            ),
            helper.make_node("Relu", [f"narrow{i}"], [f"r{i}"], name=f"model/re_lu{i}/Relu"),
        ]
    nodes += [
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="model/pool"),
        helper.make_node("Cast", ["pool"], ["output"], name="model/out_cast", to=TensorProto.FLOAT),
    ]
    return make_model(nodes, [("input", F32, ["N", 3, 8, 8])], [("output", F32, ["N", 4, 1, 1])], inits, opset=15)


def repvgg_block(
    channels=4,
    groups=1,
    stride=1,
    identity=True,
    rank=2,
    dilation=1,
    out_channels=None,
    kernel=3,
    kxk_attrs=None,
    one_attrs=None,
    spatial=9,
):
    """x → BN (identity), Conv k×k → BN, Conv 1×1 → BN, summed by Add → Add → Relu (timm's training form).

    `kxk_attrs`/`one_attrs` override the Convs' attributes (None removes one)."""
    rng = np.random.default_rng(channels + groups + stride + rank + dilation + kernel)
    out_channels = out_channels or channels
    ones = [1] * rank
    pad = dilation * (kernel - 1) // 2
    inits = {
        "kxk.w": rng.normal(0, 0.3, (out_channels, channels // groups, *[kernel] * rank)).astype(F32),
        "1x1.w": rng.normal(0, 0.3, (out_channels, channels // groups, *ones)).astype(F32),
        **bn_arrays(rng, out_channels, prefix="kxk.bn"),
        **bn_arrays(rng, out_channels, prefix="1x1.bn"),
    }
    common = dict(group=groups, strides=[stride] * rank, dilations=[dilation] * rank)

    def attributes(own, override):
        merged = {**own, **common, **(override or {})}
        return {k: v for k, v in merged.items() if v is not None}

    nodes = [
        helper.make_node(
            "Conv",
            ["input", "1x1.w"],
            ["c1"],
            name="/b1/conv_1x1/conv/Conv",
            **attributes({"kernel_shape": ones, "pads": [0] * 2 * rank}, one_attrs),
        ),
        bn_node("c1", "bn1", prefix="1x1.bn", name="/b1/conv_1x1/bn/BatchNormalization"),
        helper.make_node(
            "Conv",
            ["input", "kxk.w"],
            ["ck"],
            name="/b1/conv_kxk/conv/Conv",
            **attributes({"kernel_shape": [kernel] * rank, "pads": [pad] * 2 * rank}, kxk_attrs),
        ),
        bn_node("ck", "bnk", prefix="kxk.bn", name="/b1/conv_kxk/bn/BatchNormalization"),
        helper.make_node("Add", ["bn1", "bnk"], ["sum"], name="/b1/Add"),
    ]
    last = "sum"
    if identity:
        inits.update(bn_arrays(rng, channels, prefix="id.bn"))
        nodes += [
            bn_node("input", "bn_id", prefix="id.bn", name="/b1/identity/BatchNormalization"),
            helper.make_node("Add", ["sum", "bn_id"], ["sum2"], name="/b1/Add_1"),
        ]
        last = "sum2"
    nodes.append(helper.make_node("Relu", [last], ["output"], name="/b1/act/Relu"))
    return make_model(
        nodes, [("input", F32, ["batch", channels, *[spatial] * rank])], [("output", F32, None)], inits, opset=13
    )


def acnet_block(kernels):
    """Asymmetric branches on one input (ACNet): e.g. 3×3 + 1×3 + 3×1, each Conv → BN."""
    rng = np.random.default_rng(len(kernels))
    nodes, inits, outputs = [], {}, []
    for i, (kh, kw) in enumerate(kernels):
        inits[f"w{i}"] = rng.normal(0, 0.3, (4, 4, kh, kw)).astype(F32)
        inits.update(bn_arrays(rng, 4, prefix=f"bn{i}"))
        nodes += [
            helper.make_node(
                "Conv",
                ["x", f"w{i}"],
                [f"c{i}"],
                name=f"conv{i}",
                kernel_shape=[kh, kw],
                pads=[kh // 2, kw // 2, kh // 2, kw // 2],
            ),
            bn_node(f"c{i}", f"b{i}", prefix=f"bn{i}"),
        ]
        outputs.append(f"b{i}")
    nodes.append(helper.make_node("Sum", outputs, ["z"], name="sum"))
    return make_model(nodes, [("x", F32, ["N", 4, 7, 7])], [("z", F32, None)], inits)


def mobileone_block():
    """torch dynamo: a depthwise MobileOne block; Conv biases are zeros made by Shape/Expand/CastLike."""
    rng = np.random.default_rng(10)
    channels = 4
    inits = {**bn_arrays(rng, channels, prefix="identity")}
    nodes = [
        bn_node("input", "getitem", prefix="identity", name="node__native_batch_norm_legit_no_training__0"),
        helper.make_node(
            "Constant", [], ["zero"], name="node_Constant_11", value=numpy_helper.from_array(np.array(0.0, np.float64))
        ),
    ]
    branches = ["getitem"]
    for i, size in enumerate([1, 3, 3]):
        inits[f"w{i}"] = rng.normal(0, 0.3, (channels, 1, size, size)).astype(F32)
        inits.update(bn_arrays(rng, channels, prefix=f"bn{i}"))
        nodes += [
            helper.make_node("Shape", [f"w{i}"], [f"shape{i}"], name=f"node_Shape_{i}", start=0, end=1),
            _const(f"one{i}", [1]),
            helper.make_node("Expand", [f"shape{i}", f"one{i}"], [f"count{i}"], name=f"node_Expand_{i}"),
            helper.make_node("CastLike", ["zero", "input"], [f"zero{i}"], name=f"node_CastLike_{i}"),
            helper.make_node("Expand", [f"zero{i}", f"count{i}"], [f"bias{i}"], name=f"node_Expand_b{i}"),
            helper.make_node(
                "Conv",
                ["input", f"w{i}", f"bias{i}"],
                [f"conv{i}"],
                name=f"node_conv2d_{i}",
                group=channels,
                pads=[size // 2] * 4,
                kernel_shape=[size, size],
            ),
            bn_node(f"conv{i}", f"out{i}", prefix=f"bn{i}", name=f"node_bn_{i}"),
        ]
        branches.append(f"out{i}")
    nodes += [
        helper.make_node("Add", ["out0", "out1"], ["add_10"], name="node_add_10"),
        helper.make_node("Add", ["add_10", "out2"], ["add_21"], name="node_add_21"),
        helper.make_node("Add", ["add_21", "getitem"], ["add_32"], name="node_add_32"),
        helper.make_node("Relu", ["add_32"], ["output"], name="node_relu"),
    ]
    return make_model(nodes, [("input", F32, ["batch", channels, 6, 6])], [("output", F32, None)], inits, opset=18)


def levit_linear_norm_torchscript(restore_from: str = "h", bias: bool = False, width: int = 6):
    """timm LeViT's LinearNorm as torch.onnx.export (TorchScript) writes it: MatMul on tokens, Flatten(0, 1) for
    BatchNorm1d, and a Reshape back to Shape(MatMul output)."""
    rng = np.random.default_rng(31)
    arrays = {**bn_arrays(rng, width), "w": rng.normal(size=(4, width)).astype(F32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="linear")]
    if bias:
        arrays["b"] = rng.normal(size=width).astype(F32)
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="linear"),
            helper.make_node("Add", ["m", "b"], ["h"]),
        ]
    nodes += [
        helper.make_node("Shape", [restore_from], ["shape"]),
        helper.make_node("Flatten", ["h"], ["flat"], axis=2),
        bn_node("flat", "normed"),
        helper.make_node("Reshape", ["normed", "shape"], ["y"]),
    ]
    return make_model(nodes, [("x", F32, [2, 5, 4])], [("y", F32, [2, 5, width])], arrays)


def convnext_layer_scale():
    """torchvision ConvNeXt's block tail: MatMul on channels-last tokens, its bias Add, the Permute back to
    channels first, the layer scale γ as a Mul, and the residual Add that reads it."""
    rng = np.random.default_rng(32)
    arrays = {
        "w": rng.normal(size=(4, 6)).astype(F32),
        "b": rng.normal(size=6).astype(F32),
        "gamma": rng.uniform(0.1, 1.0, (6, 1)).astype(F32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="pwconv2"),
        helper.make_node("Add", ["m", "b"], ["h"], name="pwconv2_bias"),
        helper.make_node("Transpose", ["h"], ["t"], name="permute", perm=[0, 2, 1]),
        helper.make_node("Mul", ["t", "gamma"], ["scaled"], name="layer_scale"),
        helper.make_node("Add", ["scaled", "shortcut"], ["y"], name="residual"),
    ]
    inputs = [("x", F32, [2, 5, 4]), ("shortcut", F32, [2, 6, 5])]
    return make_model(nodes, inputs, [("y", F32, [2, 6, 5])], arrays)
