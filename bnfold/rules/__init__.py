"""The rules, one module per op family, and the registry the moves look them up in.

A producer rule folds an affine map that follows its node into it (the backward
move); a consumer rule folds one that precedes it (the forward move). Each rule's
`prepare` checks and computes without touching the graph and returns the Commit
that writes (rules/base.py). Adding a producer is one module defining `RULE` (a
ProducerRule) and one entry in PRODUCERS; the moves, the report's wording and
`--explain` derive from this table.
"""

from __future__ import annotations

from bnfold.rules import conv, conv_transpose, deform_conv, forward, gemm, matmul, standalone
from bnfold.rules.base import ConsumerRule, ProducerRule

PRODUCERS: tuple[ProducerRule, ...] = (conv.RULE, conv_transpose.RULE, deform_conv.RULE, gemm.RULE, matmul.RULE)
CONSUMERS: tuple[ConsumerRule, ...] = forward.RULES

PRODUCER_RULES: dict[str, ProducerRule] = {op: rule for rule in PRODUCERS for op in rule.op_types}
CONSUMER_RULES: dict[str, ConsumerRule] = {op: rule for rule in CONSUMERS for op in rule.op_types}


def _either(ops: list[str]) -> str:
    """'Conv, Gemm or MatMul'."""
    return ops[0] if len(ops) == 1 else f"{', '.join(ops[:-1])} or {ops[-1]}"


PRODUCER_NAMES = _either(list(PRODUCER_RULES))  # in the refusals: "no Conv, ConvTranspose, … or MatMul before it"
CONSUMER_NAMES = _either(list(CONSUMER_RULES))

__all__ = [
    "CONSUMERS",
    "CONSUMER_NAMES",
    "CONSUMER_RULES",
    "PRODUCERS",
    "PRODUCER_NAMES",
    "PRODUCER_RULES",
    "ConsumerRule",
    "ProducerRule",
    "standalone",
]
