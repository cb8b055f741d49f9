"""ConvTranspose → BN.

Before:  Y = BN(ConvTranspose(X, W, b))   W: [Cin, Cout/g, k…], group g
After:   Y = ConvTranspose(X, W', b')

Output channel o = gi·(Cout/g) + j is produced by W[gi·(Cin/g):(gi+1)·(Cin/g), j],
so that slice is scaled by s[o]; b' = b·s + t. Scaling W[:, j] for every group
(the bug other tools had) is wrong as soon as g > 1.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.folding import fold_math
from bnfold.folding.affine import AffineParams
from bnfold.folding.context import FoldContext
from bnfold.folding.rules.base import Commit, ProducerRule, folded_commit
from bnfold.graph.node_attrs import int_attr
from bnfold.graph.skip import Skip
from bnfold.words import describe


def _weight_and_group(ctx: FoldContext, conv_t: ir.Node):
    weight = ctx.kernel(conv_t)
    group = int_attr(conv_t, "group", 1)
    if group < 1 or weight.shape[0] % group:
        raise Skip(f"weight of {describe(conv_t)} has {weight.shape[0]} input channels, not divisible by group {group}")
    return weight, group


def output_channels(ctx: FoldContext, conv_t: ir.Node) -> int:
    weight, group = _weight_and_group(ctx, conv_t)
    return int(weight.shape[1] * group)


def prepare(ctx: FoldContext, conv_t: ir.Node, params: AffineParams) -> Commit:
    weight, group = _weight_and_group(ctx, conv_t)
    out_channels = weight.shape[1] * group
    bias = ctx.bias(conv_t, 2, out_channels)
    scale, shift = params.for_channels(out_channels, f"output of {describe(conv_t)}")
    return folded_commit(
        ctx,
        conv_t,
        lambda: fold_math.fold_conv_transpose(weight, bias, scale, shift, group, weight.dtype),
        weight,
        weight if bias is None else bias,
        bias_alone=lambda: fold_math.output_bias(bias, scale, shift),
        factors=scale,
    )


RULE = ProducerRule(("ConvTranspose",), weight_input=1, output_channels=output_channels, prepare=prepare)
