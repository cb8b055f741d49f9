"""One module per producer family; the moves look rules up in these tables.

PRODUCER_RULES fold an affine map that follows a node into it ("backward");
FORWARD_RULES fold one that precedes it ("forward"). Each rule's `prepare` checks
and computes without touching the graph and returns the Commit that writes.
"""

from dataclasses import dataclass

from bnfold.rules import conv, conv_transpose, forward, gemm, matmul, standalone


def _channel_axis(ctx, node) -> int:
    return 1


@dataclass(frozen=True)
class ProducerRule:
    prepare: object  # (ctx, node, AffineParams) -> Commit
    output_channels: object  # (ctx, node) -> int
    feature_axis: object = _channel_axis  # (ctx, node) -> the output axis its weight's output features run along


PRODUCER_RULES = {
    "Conv": ProducerRule(conv.prepare, conv.output_channels),
    "ConvTranspose": ProducerRule(conv_transpose.prepare, conv_transpose.output_channels),
    "Gemm": ProducerRule(gemm.prepare, gemm.output_channels),
    "MatMul": ProducerRule(matmul.prepare, matmul.output_channels, matmul.feature_axis),
}

FORWARD_RULES = {
    "Conv": forward.prepare_conv,
    "Gemm": forward.prepare_gemm,
    "MatMul": forward.prepare_matmul,
}

__all__ = ["FORWARD_RULES", "PRODUCER_RULES", "ProducerRule", "standalone"]
