"""Conv → BN.

Before:  Y = BN(Conv(X, W, b))        W: [Cout, Cin/g, k…], any group/strides/pads/dilations
After:   Y = Conv(X, W', b')          W'[o] = W[o]·s[o],  b' = b·s + t  (b = 0 if absent)

Preconditions (checked by the pass or here): the Conv's output feeds only the BN;
W and b are constant and not quantized; BN is per-channel with Cout channels.
Groups do not matter: each output channel owns its slice W[o].
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.folding import fold_math
from bnfold.folding.affine import AffineParams
from bnfold.folding.context import FoldContext
from bnfold.folding.rules.base import Commit, ProducerRule, folded_commit
from bnfold.words import describe


def output_channels(ctx: FoldContext, conv: ir.Node) -> int:
    return int(ctx.kernel(conv).shape[0])


def prepare(ctx: FoldContext, conv: ir.Node, params: AffineParams, bias_input: int = 2) -> Commit:
    """The fold into a convolution whose output channel o owns W[o] and the bias at input `bias_input`."""
    weight = ctx.kernel(conv)
    bias = ctx.bias(conv, bias_input, weight.shape[0])
    scale, shift = params.for_channels(weight.shape[0], f"output of {describe(conv)}")
    return folded_commit(
        ctx,
        conv,
        lambda: fold_math.fold_output_channels(weight, bias, scale, shift, dtype=weight.dtype),
        weight,
        weight if bias is None else bias,
        bias_alone=lambda: fold_math.output_bias(bias, scale, shift),
        factors=scale,
        bias_input=bias_input,
    )


RULE = ProducerRule(("Conv",), weight_input=1, output_channels=output_channels, prepare=prepare)
