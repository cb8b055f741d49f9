"""ConvTranspose → BN.

Before:  Y = BN(ConvTranspose(X, W, b))   W: [Cin, Cout/g, k…], group g
After:   Y = ConvTranspose(X, W', b')

Output channel o = gi·(Cout/g) + j is produced by W[gi·(Cin/g):(gi+1)·(Cin/g), j],
so that slice is scaled by s[o]; b' = b·s + t. Scaling W[:, j] for every group
(the bug other tools had) is wrong as soon as g > 1.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold import fold_math
from bnfold.batchnorm import BnParams, Skip
from bnfold.graph import int_attr
from bnfold.rules.base import FoldContext, describe, require_channels, rounded


def fold(ctx: FoldContext, conv_t: ir.Node, params: BnParams) -> None:
    weight = ctx.weight(conv_t, 1, "weight")
    bias = ctx.optional_weight(conv_t, 2, "bias")
    group = int_attr(conv_t, "group", 1)
    if weight.ndim < 3:
        raise Skip(f"weight of {describe(conv_t)} has rank {weight.ndim}, expected at least 3")
    if group < 1 or weight.shape[0] % group:
        raise Skip(f"weight of {describe(conv_t)} has {weight.shape[0]} input channels, not divisible by group {group}")
    out_channels = weight.shape[1] * group
    require_channels(conv_t, out_channels, params.channels)
    if bias is not None and bias.shape != (out_channels,):
        raise Skip(f"bias of {describe(conv_t)} has shape {bias.shape}, expected ({out_channels},)")
    new_weight, new_bias = fold_math.fold_conv_transpose(weight, bias, params.scale, params.shift, group)
    new_weight = rounded(new_weight, weight)
    new_bias = rounded(new_bias, weight if bias is None else bias)
    ctx.write_input(conv_t, 2, new_bias, "bias")
    ctx.write_input(conv_t, 1, new_weight, "weight")
