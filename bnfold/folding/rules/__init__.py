"""The rules, one module per op family, loaded from the registry in op_types.py.

A producer rule folds an affine map that follows its node into it (the backward
move); a consumer rule folds one that precedes it (the forward move). Each rule's
`prepare` checks and computes without touching the graph and returns the Commit
that writes (folding/rules/base.py). Adding a producer is one module here defining `RULE`
(a ProducerRule) and one entry in op_types.PRODUCER_RULES; the quick look at a file,
the moves, the report's wording and `--explain` derive from that table.

Imports folding/ (the context, the affine maps, the fold maths), graph/ and the shared words.
"""

from __future__ import annotations

from importlib import import_module

from bnfold.folding.rules.base import ConsumerRule, ProducerRule
from bnfold.graph import op_types


def _producer(op: str, module: str) -> ProducerRule:
    rule = import_module(f"{__name__}.{module}").RULE
    if not isinstance(rule, ProducerRule) or op not in rule.op_types:
        raise TypeError(f"op_types.PRODUCER_RULES: {module}.RULE is no ProducerRule for {op}")
    return rule


def _consumer(op: str, module: str) -> ConsumerRule:
    rules = [rule for rule in import_module(f"{__name__}.{module}").RULES if op in rule.op_types]
    if len(rules) != 1 or not isinstance(rules[0], ConsumerRule):
        raise TypeError(f"op_types.CONSUMER_RULES: {module}.RULES holds no one ConsumerRule for {op}")
    return rules[0]


PRODUCER_RULES: dict[str, ProducerRule] = {op: _producer(op, m) for op, m in op_types.PRODUCER_RULES.items()}
CONSUMER_RULES: dict[str, ConsumerRule] = {op: _consumer(op, m) for op, m in op_types.CONSUMER_RULES.items()}

__all__ = ["CONSUMER_RULES", "PRODUCER_RULES", "ConsumerRule", "ProducerRule"]
