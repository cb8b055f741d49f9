"""Conv → BN.

Before:  Y = BN(Conv(X, W, b))        W: [Cout, Cin/g, k…], any group/strides/pads/dilations
After:   Y = Conv(X, W', b')          W'[o] = W[o]·s[o],  b' = b·s + t  (b = 0 if absent)

Preconditions (checked by the pass or here): the Conv's output feeds only the BN;
W and b are constant and not quantized; BN is per-channel with Cout channels.
Groups do not matter: each output channel owns its slice W[o].
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold import fold_math
from bnfold.batchnorm import BnParams, Skip
from bnfold.rules.base import FoldContext, describe, require_channels, rounded


def fold(ctx: FoldContext, conv: ir.Node, params: BnParams) -> None:
    weight = ctx.weight(conv, 1, "weight")
    bias = ctx.optional_weight(conv, 2, "bias")
    if weight.ndim < 3:
        raise Skip(f"weight of {describe(conv)} has rank {weight.ndim}, expected at least 3")
    require_channels(conv, weight.shape[0], params.channels)
    if bias is not None and bias.shape != (weight.shape[0],):
        raise Skip(f"bias of {describe(conv)} has shape {bias.shape}, expected ({weight.shape[0]},)")
    new_weight, new_bias = fold_math.fold_output_channels(weight, bias, params.scale, params.shift)
    new_weight = rounded(new_weight, weight)
    new_bias = rounded(new_bias, weight if bias is None else bias)
    # Bias first: it may free the weight of a second user (a Shape feeding the old bias).
    ctx.write_input(conv, 2, new_bias, "bias")
    ctx.write_input(conv, 1, new_weight, "weight")
