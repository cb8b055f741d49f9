"""DeformConv → BN (opset 19).

Before:  Y = BN(DeformConv(X, W, offset, B, mask))   W: [Cout, Cin/g, k…]; B: [Cout], input 3
After:   Y = DeformConv(X, W', offset, B', mask)     W'[o] = W[o]·s[o],  B' = B·s + t  (B = 0 if absent)

The offsets and the mask decide where each tap samples and how much it counts; they
act before the weights and stay as they are. As in Conv, output channel o owns W[o]
(any group or offset_group), so the fold is Conv's with the bias at input 3.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.folding.affine import AffineParams
from bnfold.folding.context import FoldContext
from bnfold.folding.rules import conv
from bnfold.folding.rules.base import Commit, ProducerRule


def prepare(ctx: FoldContext, node: ir.Node, params: AffineParams) -> Commit:
    return conv.prepare(ctx, node, params, bias_input=3)


RULE = ProducerRule(("DeformConv",), weight_input=1, output_channels=conv.output_channels, prepare=prepare)
