"""Per-BN diagnostics before folding: where ε, a dead γ or float16 would matter, and a BN's own numbers.

Per channel (aggregated per model by `diagnose`, shown by the dry run and `--explain`):

* ε dominates σ² when σ² < 10·ε: there ε, not the data, sets most of the scale.
* A dead channel has |γ| < 1e-6: it outputs β whatever its input.
* fp16 overflow risk: after folding, a weight grows by |s|; with the producer's
  largest weight w, |s|·w > 65504 (float16's largest value) may overflow in fp16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from bnfold.folding import fold_math
from bnfold.folding.batchnorm import DEFAULT_EPSILON, check_parameter_shapes, read_raw_params, training_reason
from bnfold.folding.rules import PRODUCER_RULES
from bnfold.graph.constant_eval import ConstantResolver
from bnfold.graph.node_attrs import float_attr, int_attr, opset_of
from bnfold.graph.skip import Skip

EPSILON_DOMINANCE = 10.0
DEAD_GAMMA = 1e-6
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class Diagnosis:
    """Channels of one BN that deserve a look."""

    epsilon_dominates: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    fp16_overflow: list[int] = field(default_factory=list)
    training: str | None = None
    unreadable: str | None = None  # why the parameters could not be read

    def to_dict(self) -> dict:
        return {
            "epsilon_dominates": self.epsilon_dominates,
            "dead": self.dead,
            "fp16_overflow": self.fp16_overflow,
            "training": self.training,
            "unreadable": self.unreadable,
        }


@dataclass(frozen=True)
class BnNumbers:
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float
    scale: np.ndarray
    shift: np.ndarray


def diagnose(model: ir.Model) -> dict[str, Diagnosis]:
    """A Diagnosis for every BatchNormalization of `model`, by name (call before folding)."""
    from bnfold.folding.fold_pass import batch_norms

    resolver = ConstantResolver(model)
    return {bn.name or f"#{i}": study(resolver, bn, scope)[1] for i, (bn, scope) in enumerate(batch_norms(model))}


def study(resolver: ConstantResolver, bn: ir.Node, scope) -> tuple[BnNumbers | None, Diagnosis]:
    opset = opset_of(bn, scope.opsets)
    training = training_reason(bn, opset)
    try:
        arrays = read_raw_params(bn, resolver)
        check_parameter_shapes(None, arrays, per_element=opset < 9 and int_attr(bn, "spatial", 1) == 0)
    except Skip as skip:
        return None, Diagnosis(training=training, unreadable=skip.reason)
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)
    epsilon = float_attr(bn, "epsilon", DEFAULT_EPSILON)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale, shift = fold_math.bn_scale_shift(gamma, beta, mean, var, epsilon)
    numbers = BnNumbers(gamma, beta, mean, var, epsilon, scale, shift)
    diagnosis = Diagnosis(
        epsilon_dominates=_channels(var < EPSILON_DOMINANCE * epsilon),
        dead=_channels(np.abs(gamma) < DEAD_GAMMA),
        fp16_overflow=_channels(np.abs(scale) * _largest_weight(bn, resolver) > FLOAT16_MAX),
        training=training,
    )
    return numbers, diagnosis


def _channels(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.asarray(mask).reshape(-1))]


def _largest_weight(bn: ir.Node, resolver: ConstantResolver) -> float:
    """max|W| of the producer's weight (1 when there is no foldable producer: the scale alone counts)."""
    producer = bn.inputs[0].producer() if bn.inputs and bn.inputs[0] is not None else None
    rule = PRODUCER_RULES.get(producer.op_type) if producer is not None else None
    if producer is None or rule is None or rule.weight_input >= len(producer.inputs):
        return 1.0
    weight = resolver.value_of(producer.inputs[rule.weight_input])
    return 1.0 if weight is None or weight.size == 0 else float(np.max(np.abs(weight.astype(np.float64))))
