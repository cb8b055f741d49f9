"""Never costlier on the runtime's own terms (issue 20): the constants of patterns onnxruntime fuses stay.

Each pattern is built the way exporters write it, between two linear layers bnfold could fold its
constants into. fold_and_check judges every fold by an independent onnxruntime comparison and, through
assert_never_costlier, asserts that onnxruntime's optimizer makes no more nodes and no fewer fused ops
of the folded model than of the original (runtime_cost.py).
"""

from __future__ import annotations

import pytest
from builders.activations import conv_gelu_bn_net, pattern_net
from builders.transformer import transformer_encoder
from helpers import fold_and_check, op_counts
from runtime_cost import fused_ops, optimized_ops

# pattern -> (the nodes left as they are, by op type and constant, and the report's reason)
KEPT = {
    "gelu": ("part of a GELU (runtime fuses it)", {"Div": 1, "Add": 1, "Mul": 1}),
    "gelu_half_first": ("part of a GELU (runtime fuses it)", {"Div": 1, "Add": 1, "Mul": 1}),
    "gelu_tanh": ("part of a GELU (tanh form) (runtime fuses it)", {"Mul": 3, "Add": 1}),
    "quick_gelu": ("part of a QuickGELU/Swish (runtime fuses it)", {"Mul": 1}),
    "layer_norm": ("part of a LayerNorm/RMSNorm (runtime fuses it)", {"Add": 2, "Mul": 1}),
    "rms_norm": ("part of a LayerNorm/RMSNorm (runtime fuses it)", {"Add": 1, "Mul": 1}),
    "attention": ("attention's score scaling (runtime fuses it into the MatMul)", {"Div": 1}),
}


@pytest.mark.parametrize("name", sorted(KEPT))
def test_a_fused_pattern_keeps_its_constants(name):
    model = pattern_net(name)
    _, records = fold_and_check(model)  # independent comparison, and no fused op lost (runtime_cost.py)
    reason, kept = KEPT[name]
    found: dict[str, int] = {}
    for record in records:
        if record.action == "kept" and record.reason == reason:
            found[record.op] = found.get(record.op, 0) + 1
    assert found == kept, records
    assert fused_ops(model, optimized_ops(model))  # the pattern is one onnxruntime fuses


def test_a_pattern_onnxruntime_does_not_fuse_still_folds():
    # Paddle's hard-swish x·relu6(x + 3)/6: onnxruntime keeps it as ops, so its Div(6) folds into the next Conv
    model = pattern_net("hard_swish")
    folded, records = fold_and_check(model)
    assert op_counts(model)["Div"] == 1 and op_counts(folded)["Div"] == 0
    assert [r.action for r in records if r.op == "Div"] == ["folded"]


def test_conv_gelu_bn_keeps_the_gelu_whole():
    model = conv_gelu_bn_net()
    folded, records = fold_and_check(model)
    assert "BatchNormalization" not in op_counts(folded) or op_counts(folded)["BatchNormalization"] < 2
    assert optimized_ops(folded)["Gelu"] == 1
    assert any(r.op == "Mul" and r.action == "kept" and "GELU" in (r.reason or "") for r in records)


def test_a_zero_matmul_bias_stays_for_the_gemm_fusion():
    # torch's TransformerEncoder: the in-projection bias is all zeros; removing its Add costs onnxruntime a Gemm
    model = transformer_encoder(layers=2, in_bias="zero")
    folded, records = fold_and_check(model)
    kept = [
        r for r in records if r.action == "kept" and r.reason == "MatMul's bias (runtime fuses MatMul+Add into Gemm)"
    ]
    assert kept and all(r.op == "Add" for r in kept)
    assert optimized_ops(folded)["Gemm"] >= optimized_ops(model)["Gemm"]
