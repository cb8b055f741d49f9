"""DeformConv → BN: a producer added as one rule module and one registry entry (bnfold/folding/rules/deform_conv.py)."""

import numpy as np
import pytest
from helpers import bn_arrays, bn_node, fold_and_check, make_model, op_counts
from onnx import helper

from bnfold.folding.rules import PRODUCER_RULES
from bnfold.graph.op_types import PRODUCER_NAMES

F32 = np.float32


def deform_conv_bn(bias: bool, mask: bool, group: int, offset_group: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cin, cout, kernel, size = 4, 8, 3, 7
    out = size - kernel + 1
    inits = {
        "w": rng.normal(0, 0.3, (cout, cin // group, kernel, kernel)).astype(F32),
        "offset": rng.normal(0, 0.4, (1, 2 * offset_group * kernel * kernel, out, out)).astype(F32),
        **bn_arrays(rng, cout),
    }
    inputs = ["x", "w", "offset", "b" if bias else "", "mask" if mask else ""]
    if bias:
        inits["b"] = rng.normal(0, 0.1, cout).astype(F32)
    if mask:
        inits["mask"] = rng.uniform(0, 1, (1, offset_group * kernel * kernel, out, out)).astype(F32)
    while inputs[-1] == "":
        inputs.pop()
    nodes = [
        helper.make_node(
            "DeformConv",
            inputs,
            ["d"],
            name="deform",
            kernel_shape=[kernel, kernel],
            group=group,
            offset_group=offset_group,
        ),
        bn_node("d", "z"),
    ]
    return make_model(nodes, [("x", F32, [1, cin, size, size])], [("z", F32, None)], inits, opset=19)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize(("group", "offset_group"), [(1, 1), (2, 1), (2, 2), (4, 4)])
def test_deform_conv_bn_folds(bias, mask, group, offset_group):
    folded, records = fold_and_check(deform_conv_bn(bias, mask, group, offset_group))
    assert [(r.action, r.into, r.pattern) for r in records] == [("folded", "DeformConv 'deform'", "backward")]
    assert op_counts(folded) == {"DeformConv": 1}
    node = folded.graph.node[0]
    assert node.input[3]  # the folded bias sits at input 3
    assert bool(len(node.input) > 4 and node.input[4]) == mask


def test_the_registry_names_every_producer_in_the_refusals():
    assert set(PRODUCER_RULES) == {"Conv", "ConvTranspose", "DeformConv", "Gemm", "MatMul"}
    assert PRODUCER_NAMES == "Conv, ConvTranspose, DeformConv, Gemm or MatMul"
