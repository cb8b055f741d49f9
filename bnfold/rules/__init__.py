"""One module per producer family; the pass looks rules up in PRODUCER_RULES."""

from bnfold.rules import conv, conv_transpose, gemm, matmul, standalone

PRODUCER_RULES = {
    "Conv": conv.fold,
    "ConvTranspose": conv_transpose.fold,
    "Gemm": gemm.fold,
    "MatMul": matmul.fold,
}

__all__ = ["PRODUCER_RULES", "standalone"]
