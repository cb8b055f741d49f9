"""The op types the pass, the quick look at a file and the check know by name: one list each.

No onnx-ir and no onnx here, so the quick look (model_io/prescreen.py) and the CLI can read them
without loading either. Every set is of default-domain ops. The rules themselves are
registered here too: PRODUCER_RULES and CONSUMER_RULES name, for each op a rule
folds into, the module of `bnfold/folding/rules/` that holds its rule. Adding an op a rule
folds into is one entry here; the quick look, the moves, the report's wording and
`--explain` all read these tables, so none of them can miss it.
"""

from __future__ import annotations

BATCH_NORM = "BatchNormalization"

# A BN backward folds into one of these (module in bnfold/folding/rules/ defining RULE, a ProducerRule).
PRODUCER_RULES = {
    "Conv": "conv",
    "ConvTranspose": "conv_transpose",
    "DeformConv": "deform_conv",
    "Gemm": "gemm",
    "MatMul": "matmul",
}
# A BN before one of these folds forward into it (module defining RULES, ConsumerRules by op type).
CONSUMER_RULES = {"Conv": "forward", "Gemm": "forward", "MatMul": "forward"}
WEIGHTED = frozenset(PRODUCER_RULES) | frozenset(CONSUMER_RULES)

# Elementwise ops that are a per-channel affine map when their other input is a constant.
ELEMENTWISE_AFFINE = frozenset({"Mul", "Add", "Sub", "Div"})
AFFINE = ELEMENTWISE_AFFINE | {BATCH_NORM}

# Ops that sum parallel branches (RepVGG/MobileOne-style reparameterization).
BRANCH_SUMS = frozenset({"Add", "Sum", "Sub"})

# Ops that only move values between axes: a channel axis is followed through them.
LAYOUT = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})
FLATTENING = frozenset({"Flatten", "Reshape"})
# What a scale folded forward may pass on its way to a consumer (Pad adds zeros, which a scale keeps).
FORWARD_LAYOUT = frozenset({"Transpose", "Pad"})
# Ops that compute nothing new from their data input: a fold's path may run through them.
PASS_THROUGH = LAYOUT | {"Identity", "Dropout", "Cast", "Pad"}

# Ops whose output is not a function of their inputs alone.
NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
QUANTIZATION = frozenset({"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"})
# Integer-arithmetic producers: their weights are quantized, nothing folds into them.
QUANTIZED_PRODUCERS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm"})


def either(ops: list[str]) -> str:
    """'Conv, Gemm or MatMul'."""
    return ops[0] if len(ops) == 1 else f"{', '.join(ops[:-1])} or {ops[-1]}"


PRODUCER_NAMES = either(list(PRODUCER_RULES))  # in the refusals: "no Conv, ConvTranspose, … or MatMul before it"
CONSUMER_NAMES = either(list(CONSUMER_RULES))
