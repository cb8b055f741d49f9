"""Folding forward through the Transposes and zero Pads exporters put before a Conv.

Keras models carry their input normalization (the `Normalization` and `Rescaling` layers) on
NHWC data, and tf2onnx puts a Transpose to NCHW, and for `ZeroPadding2D` a Pad, between it and
the first Conv. A per-channel map on the last NHWC axis is the Conv's input channel after the
Transpose; a pure scale also passes a Pad that adds zeros (s·0 = 0), a shift does not.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import bn_arrays, bn_node, fold_and_check, make_model, op_counts
from onnx import helper, numpy_helper

import bnfold

F32 = np.float32


def keras_stem(pads=None, conv_pads=(0, 0, 0, 0), opset=13, pad_attrs=None, perm=(0, 3, 1, 2), shape=(9, 9, 3)):
    """input [N, H, W, 3] → Sub(mean) → Div(std) → Transpose → [Pad] → Conv."""
    rng = np.random.default_rng(41)
    inits = {
        "normalization/mean": rng.normal(0, 0.3, 3).astype(F32),
        "normalization/std": rng.uniform(0.5, 1.5, 3).astype(F32),
        "stem_conv/kernel": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(F32),
    }
    nodes = [
        helper.make_node("Sub", ["input", "normalization/mean"], ["centered"], name="normalization/sub"),
        helper.make_node("Div", ["centered", "normalization/std"], ["normed"], name="normalization/truediv"),
        helper.make_node("Transpose", ["normed"], ["nchw"], name="stem_conv__6", perm=list(perm)),
    ]
    conv_input = "nchw"
    if pads is not None:
        if opset < 11:
            nodes.append(
                helper.make_node("Pad", ["nchw"], ["padded"], name="stem_conv_pad", pads=pads, **(pad_attrs or {}))
            )
        else:
            inits["pads"] = np.array(pads, np.int64)
            nodes.append(
                helper.make_node("Pad", ["nchw", "pads"], ["padded"], name="stem_conv_pad", **(pad_attrs or {}))
            )
        conv_input = "padded"
    nodes.append(
        helper.make_node(
            "Conv",
            [conv_input, "stem_conv/kernel"],
            ["output"],
            name="stem_conv",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=list(conv_pads),
        )
    )
    return make_model(nodes, [("input", F32, ["N", *shape])], [("output", F32, None)], inits, opset=opset)


def _records(records):
    return {r.name: (r.action, r.into, r.reason) for r in records}


def test_a_valid_conv_takes_the_whole_normalization_through_the_transpose():
    folded, records = fold_and_check(keras_stem())
    assert op_counts(folded) == {"Transpose": 1, "Conv": 1}
    assert _records(records)["normalization/truediv"][:2] == (
        "folded",
        "Conv 'stem_conv' (through Transpose 'stem_conv__6')",
    )


@pytest.mark.parametrize("opset", [9, 13])
def test_a_zero_pad_lets_the_scale_through_and_stops_the_shift(opset):
    folded, records = fold_and_check(keras_stem(pads=[0, 0, 0, 0, 0, 0, 1, 1], opset=opset))
    assert op_counts(folded) == {"Sub": 1, "Transpose": 1, "Pad": 1, "Conv": 1}
    found = _records(records)
    assert found["normalization/truediv"][:2] == (
        "folded",
        "Conv 'stem_conv' (through Transpose 'stem_conv__6', Pad 'stem_conv_pad')",
    )
    assert "normalization/sub" not in found  # a plain map that stays, with no BN in its chain, has no record


@pytest.mark.parametrize(
    ("pads", "pad_attrs", "divisions"),
    [
        ([0, 0, 0, 0, 0, 0, 1, 1], {"mode": "reflect"}, 0),  # copies values: any per-channel map commutes
        ([0, 0, 0, 0, 0, 0, 1, 1], {"mode": "edge"}, 0),
        ([0, 1, 0, 0, 0, -1, 0, 0], {}, 1),  # shifts the channels
        ([0, 0, 1, 1, 0, 0, 1, 1], {"value": 1.0}, 1),  # s·1 ≠ 1
    ],
    ids=["reflect", "edge", "channel axis", "value 1"],
)
def test_which_pads_a_scale_passes(pads, pad_attrs, divisions):
    folded, _ = fold_and_check(keras_stem(pads=pads, opset=9, pad_attrs=pad_attrs))
    assert op_counts(folded)["Div"] == divisions


def test_a_bn_before_an_edge_pad_folds_into_the_conv_shift_and_all():
    folded, records = fold_and_check(bn_pad_conv({"mode": "edge"}, opset=9))
    (record,) = records
    assert (record.action, record.into) == ("folded", "Conv 'conv0' (through Pad 'pad')")
    assert op_counts(folded) == {"Pad": 1, "Conv": 1}


def test_a_bn_before_a_pad_filling_with_another_value_is_kept_with_the_reason():
    folded, records = fold_and_check(bn_pad_conv({"value": 0.5}, opset=9))
    (record,) = records
    assert record.action == "kept"
    assert record.reason.endswith("padding: Pad 'pad' fills with 0.5, which the map would not keep")
    assert op_counts(folded)["BatchNormalization"] == 1


def test_a_transpose_that_leaves_the_channel_off_axis_1_stops_the_fold():
    folded, _ = fold_and_check(keras_stem(perm=(0, 3, 2, 1)))  # NHWC → NCWH: the channel is on axis 1 still
    assert op_counts(folded) == {"Transpose": 1, "Conv": 1}
    folded, _ = fold_and_check(keras_stem(perm=(0, 1, 3, 2), shape=(3, 9, 3)))  # NHWC → NHCW: on axis 2
    assert op_counts(folded)["Div"] == 1


def bn_pad_conv(pad_attrs=None, opset=13):
    rng = np.random.default_rng(42)
    inits = {**bn_arrays(rng, 3), "w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(F32)}
    pads = [0, 0, 1, 1, 0, 0, 1, 1]
    if opset < 11:
        pad = helper.make_node("Pad", ["b"], ["p"], name="pad", pads=pads, **(pad_attrs or {}))
    else:
        inits["pads"] = np.array(pads, np.int64)
        pad = helper.make_node("Pad", ["b", "pads"], ["p"], name="pad", **(pad_attrs or {}))
    nodes = [
        bn_node("x", "b", name="bn_data"),
        pad,
        helper.make_node("Conv", ["p", "w"], ["y"], name="conv0", kernel_shape=[3, 3]),
    ]
    return make_model(nodes, [("x", F32, ["N", 3, 8, 8])], [("y", F32, None)], inits, opset=opset)


def test_a_bn_before_a_zero_pad_and_a_conv_is_converted_with_its_scale_folded():
    folded, records = fold_and_check(bn_pad_conv(), standalone="mul-add")
    assert op_counts(folded) == {"Add": 1, "Pad": 1, "Conv": 1}
    (record,) = records
    assert (record.action, record.into) == (
        "converted",
        "Add (Mul folded into Conv 'conv0' (through Pad 'pad') (forward))",
    )
    added = next(n for n in folded.graph.node if n.op_type == "Add")
    shift = numpy_helper.to_array(next(i for i in folded.graph.initializer if i.name == added.input[1]))
    assert shift.shape == (3, 1, 1)


def test_tf2onnx_without_its_optimizer_bn_before_a_conv_folds_forward_and_the_transpose_pair_goes():
    """NHWC input → T(0,3,1,2) → BN → T(0,2,3,1) → T(0,3,1,2) → Conv → T(0,2,3,1)."""
    rng = np.random.default_rng(43)
    inits = {
        **bn_arrays(rng, 3),
        "w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(F32),
        "b": rng.normal(size=4).astype(F32),
    }
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], name="bn__2", perm=[0, 3, 1, 2]),
        bn_node("nchw", "normed", name="batch_normalization/FusedBatchNormV3"),
        helper.make_node("Transpose", ["normed"], ["nhwc"], name="bn__4", perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["nhwc"], ["nchw2"], name="conv2d__6", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw2", "w", "b"], ["conv"], name="conv2d/Conv2D", kernel_shape=[3, 3]),
        helper.make_node("Transpose", ["conv"], ["output"], name="conv2d__8", perm=[0, 2, 3, 1]),
    ]
    model = make_model(nodes, [("input", F32, ["N", 8, 8, 3])], [("output", F32, None)], inits)
    folded, records = fold_and_check(model)
    assert [n.name for n in folded.graph.node] == ["bn__2", "conv2d/Conv2D", "conv2d__8"]
    # the pair is bypassed, not renamed over: 'nchw2' held the BN's output, which no value holds now
    assert folded.graph.node[1].input[0] == "nchw"
    assert bnfold.verify(model, folded).verdict == "passed"  # with the sites it finds by itself
    (record,) = records
    assert (record.action, record.into, record.pattern) == (
        "folded",
        "Conv 'conv2d/Conv2D' (through Transpose 'bn__4', Transpose 'conv2d__6')",
        "forward",
    )
