"""Signed and constant branches in reparameterizable sums (timm FastViT's RepMixer), built as torch emits them.

timm's `RepMixer` computes `x + layer_scale(mixer(x) - norm(x))`: `mixer` is a MobileOne
block (identity BN, a 1×1 and a k×k depthwise Conv → BN, summed), `norm` a MobileOne
block with only its identity BN, whose forward is `0 + BN(x)` (TorchScript: an Add of a
Cast Constant), and `layer_scale` a Mul by γ of shape [C, 1, 1]. All of it is one
depthwise Conv: the mixer's branches merge, the Sub subtracts the norm's BN, γ folds
into the merged Conv, and the outer sum adds x.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import bn_arrays, bn_node, fold_and_check, make_model, op_counts
from onnx import TensorProto, helper, numpy_helper

F32 = np.float32
PREFIX = "/stages.0/blocks.0/token_mixer"


def _zero(name: str) -> list:
    """TorchScript's Python 0 in `0 + tensor`: an int64 Constant cast to the tensor's type."""
    return [
        helper.make_node(
            "Constant", [], [f"{name}_i"], name=f"{name}_c", value=numpy_helper.from_array(np.array(0, np.int64))
        ),
        helper.make_node("Cast", [f"{name}_i"], [name], name=f"{name}_cast", to=TensorProto.FLOAT),
    ]


def repmixer(channels=4, kernel=3, zero=None, layer_scale=True, subtract_conv=False):
    """The RepMixer block; `zero`: the constant added to the norm's BN (default: TorchScript's cast 0)."""
    rng = np.random.default_rng(21)
    inits = {**bn_arrays(rng, channels, prefix="mixer.identity"), **bn_arrays(rng, channels, prefix="norm.identity")}
    nodes = [bn_node("x", "mix_id", prefix="mixer.identity", name=f"{PREFIX}/mixer/identity/BatchNormalization")]
    for branch, size in (("conv_scale", 1), ("conv_kxk.0", kernel)):
        inits[f"{branch}.w"] = rng.normal(0, 0.3, (channels, 1, size, size)).astype(F32)
        inits.update(bn_arrays(rng, channels, prefix=f"{branch}.bn"))
        nodes += [
            helper.make_node(
                "Conv",
                ["x", f"{branch}.w"],
                [f"{branch}_c"],
                name=f"{PREFIX}/mixer/{branch}/conv/Conv",
                group=channels,
                kernel_shape=[size, size],
                pads=[size // 2] * 4,
            ),
            bn_node(f"{branch}_c", f"{branch}_bn", prefix=f"{branch}.bn", name=f"{PREFIX}/mixer/{branch}/bn/BN"),
        ]
    nodes += [
        helper.make_node("Add", ["conv_scale_bn", "mix_id"], ["mix1"], name=f"{PREFIX}/mixer/Add"),
        helper.make_node("Add", ["mix1", "conv_kxk.0_bn"], ["mixed"], name=f"{PREFIX}/mixer/Add_1"),
        bn_node("x", "norm_id", prefix="norm.identity", name=f"{PREFIX}/norm/identity/BatchNormalization"),
    ]
    if zero is None:
        nodes += _zero("zero")
    else:
        inits["zero"] = zero
    nodes.append(helper.make_node("Add", ["norm_id", "zero"], ["normed"], name=f"{PREFIX}/norm/Add"))
    operands = ["normed", "mixed"] if subtract_conv else ["mixed", "normed"]
    nodes.append(helper.make_node("Sub", operands, ["diff"], name=f"{PREFIX}/Sub"))
    scaled = "diff"
    if layer_scale:
        inits["layer_scale.gamma"] = rng.uniform(0.5, 1.5, (channels, 1, 1)).astype(F32)
        nodes.append(helper.make_node("Mul", ["diff", "layer_scale.gamma"], ["scaled"], name=f"{PREFIX}/Mul"))
        scaled = "scaled"
    nodes.append(helper.make_node("Add", ["x", scaled], ["y"], name=f"{PREFIX}/Add"))
    return make_model(nodes, [("x", F32, ["batch", channels, 8, 8])], [("y", F32, None)], inits, opset=13)


@pytest.mark.parametrize("layer_scale", [True, False])
@pytest.mark.parametrize("subtract_conv", [False, True])
def test_a_repmixer_becomes_one_depthwise_conv(layer_scale, subtract_conv):
    folded, records = fold_and_check(repmixer(layer_scale=layer_scale, subtract_conv=subtract_conv))
    assert op_counts(folded) == {"Conv": 1}
    conv = folded.graph.node[0]
    assert conv.name == f"{PREFIX}/mixer/conv_kxk.0/conv/Conv" and conv.output[0] == "y"
    bns = {r.name: r for r in records if r.op == "BatchNormalization"}
    assert len(bns) == 4 and all(r.action == "folded" for r in bns.values())
    assert bns[f"{PREFIX}/norm/identity/BatchNormalization"].pattern == "reparameterized"


@pytest.mark.parametrize(
    "zero",
    [np.zeros((4, 1, 1), F32), np.full((1, 4, 1, 1), 0.25, F32), np.array([0.5], F32)],
    ids=["per-channel zeros", "per-channel [1,C,1,1]", "one number"],
)
def test_a_constant_in_the_sum_goes_into_the_bias(zero):
    folded, _ = fold_and_check(repmixer(zero=zero))
    assert op_counts(folded) == {"Conv": 1}


def test_a_constant_that_varies_along_space_keeps_the_branches_apart_and_says_why():
    zero = np.linspace(0, 1, 8, dtype=F32).reshape(1, 8)  # along W: not a bias
    folded, records = fold_and_check(repmixer(zero=zero))
    norm = next(r for r in records if r.name == f"{PREFIX}/norm/identity/BatchNormalization")
    assert norm.action == "kept"
    assert norm.reason.endswith(
        "its branch cannot merge with the others: the constant 'zero' added to the sum varies along more than "
        "the channel axis"
    )
    assert op_counts(folded)["Sub"] == 1


def test_bn_only_takes_a_constant_beside_a_bn_branch_but_leaves_a_lone_conv_plus_constant():
    folded, records = fold_and_check(repmixer(), bn_only=True)
    assert all(r.action == "folded" for r in records if r.op == "BatchNormalization")
    assert op_counts(folded) == {"Conv": 1, "Mul": 1, "Add": 1}  # the layer scale is no BN's: it stays
    rng = np.random.default_rng(22)
    inits = {"w": rng.normal(0, 0.3, (4, 1, 3, 3)).astype(F32), "c": rng.normal(0, 0.3, (4, 1, 1)).astype(F32)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], name="conv", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["conv", "c"], ["y"], name="bias_add"),
    ]
    model = make_model(nodes, [("x", F32, ["N", 4, 6, 6])], [("y", F32, None)], inits)
    assert op_counts(fold_and_check(model, bn_only=True)[0]) == {"Conv": 1, "Add": 1}
    assert op_counts(fold_and_check(model)[0]) == {"Conv": 1}
