"""The patterns onnxruntime fuses into one kernel, whose constants a fold must leave where they are.

bnfold folds a Mul/Add/Sub/Div by a constant into a neighbouring linear layer. When
that constant belongs to a pattern onnxruntime's optimizer turns into one kernel,
the fold costs the runtime that kernel: GELU's final Mul(0.5) folded into the next
layer leaves Div, Erf, Add, Mul and Mul where one Gelu ran, and the model is slower
at ORT_ENABLE_ALL though it has fewer ONNX nodes. So before the pass, every such
pattern is found, and its Mul/Add/Sub/Div nodes are left alone (reported `kept`
with the pattern's reason); they are not absorbed into a BN's chain either.

`RUNTIME_FUSED` is the list, one entry per pattern, each checked against
onnxruntime's optimizer (tests/folding/test_runtime_fusions.py builds each pattern the way
exporters write it and asserts the fused op survives the fold):

* GELU, erf form (Gelu): Div(x, √2) → Erf → Add(1) → Mul(x, ·) → Mul(0.5), or
  Mul(x, 0.5) joined with Add(1)'s output; the Div, the Add(1) and the 0.5 Mul.
* GELU, tanh form (FastGelu): Mul(√(2/π)) → Tanh → Add(1), Mul(0.044715) on x³, the 0.5 Mul.
* QuickGELU and Swish-β (QuickGelu): Mul(x, α) → Sigmoid → Mul(x, ·); the Mul(α).
* LayerNorm and RMSNorm written out (LayerNormalization, SimplifiedLayerNormalization):
  ReduceMean(x²) → Add(ε) → Sqrt → Div (or Reciprocal → Mul), then Mul(γ) and, for
  LayerNorm, Add(β): the ε Add, the γ Mul, the β Add.
* attention's score scaling (FusedMatMul): a one-number Mul/Div on either input or
  on the output of a MatMul of two computed values that a Softmax reads.
* the bias of a MatMul of rank > 2 (Gemm): Add(MatMul(x, W), b) with constant W and
  b over the last axis. bnfold may change b (a BN folded back through it) but never
  removes the Add (a zero bias, or one folded forward): onnxruntime runs MatMul + Add
  as one Gemm. At rank 2 bnfold makes the Gemm itself.

Patterns onnxruntime does not fuse when written out (Paddle's hard-swish
x · relu6(x + 3) / 6, Mish) are not listed: folding their constants costs nothing,
and their Div(6) folds into the next Conv. A constant inside any pattern whose data
path rejoins its own input (x · f(x)) cannot fold anyway (moves.py: a value a fold
changes must feed only the fold's path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnfold.graph.node_attrs import in_default_domain
from bnfold.graph.op_types import ELEMENTWISE_AFFINE

ValueOf = Callable[[ir.Value | None], np.ndarray | None]
RankOf = Callable[[ir.Value], int | None]
Matcher = Callable[[ir.Node, ValueOf, RankOf], list[ir.Node]]

_LAYOUT = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity"})


@dataclass(frozen=True)
class FusedPattern:
    """One pattern: what it is called in the report, the node every match starts from, and the matcher that
    returns the pattern's Mul/Add/Sub/Div nodes (empty when the anchor is not in one)."""

    name: str
    anchor: str
    match: Matcher
    reason: str = "part of a {name} (runtime fuses it)"


def _op(value: ir.Value | None, *ops: str) -> ir.Node | None:
    """The default-domain producer of `value` when its op is one of `ops`."""
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type in ops and in_default_domain(node) else None


def _only_user(value: ir.Value, *ops: str) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    node = uses[0].node
    return node if node.op_type in ops and in_default_domain(node) else None


def _constant_side(node: ir.Node, value_of: ValueOf) -> tuple[ir.Value, np.ndarray] | None:
    """(the data input, the constant) of a binary node with exactly one constant input."""
    if len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    constants = [value_of(v) for v in node.inputs]
    if (constants[0] is None) == (constants[1] is None):
        return None
    index = 0 if constants[0] is None else 1
    return node.inputs[index], constants[1 - index]  # type: ignore[return-value]


def _near(node: ir.Node, value_of: ValueOf, *targets: float) -> bool:
    """Whether `node` multiplies/adds/... by one number close to one of `targets`."""
    side = _constant_side(node, value_of)
    if side is None or side[1].size != 1 or side[1].dtype.kind != "f":
        return False
    number = float(side[1].reshape(-1)[0])
    return any(abs(number - target) <= 1e-3 * abs(target) for target in targets)


def _half_mul(join: ir.Node, x: ir.Value | None, value_of: ValueOf) -> ir.Node | None:
    """GELU's 0.5: after the join (pattern 2), or on x before it (pattern 1)."""
    after = _only_user(join.outputs[0], "Mul")
    if after is not None and _near(after, value_of, 0.5):
        return after
    before = next((node for node in (_op(v, "Mul") for v in join.inputs) if node is not None), None)
    if before is not None and x is not None and x in before.inputs and _near(before, value_of, 0.5):
        return before
    return None


def _gelu_tail(nonlinear: ir.Node, x: ir.Value | None, value_of: ValueOf) -> list[ir.Node]:
    """After GELU's Erf or Tanh: its Add(1) and the 0.5 Mul, or [] when they are not there."""
    add = _only_user(nonlinear.outputs[0], "Add")
    join = _only_user(add.outputs[0], "Mul") if add is not None and _near(add, value_of, 1.0) else None
    half = _half_mul(join, x, value_of) if join is not None else None
    return [add, half] if add is not None and half is not None else []


def _gelu_erf(erf: ir.Node, value_of: ValueOf, rank: RankOf) -> list[ir.Node]:
    div = _op(erf.inputs[0], "Div")
    if div is None or not _near(div, value_of, float(np.sqrt(2.0)), 1.4142099618911743):
        return []
    tail = _gelu_tail(erf, div.inputs[0], value_of)
    return [div, *tail] if tail else []


def _gelu_tanh(tanh: ir.Node, value_of: ValueOf, rank: RankOf) -> list[ir.Node]:
    scale = _op(tanh.inputs[0], "Mul")
    side = _constant_side(scale, value_of) if scale is not None else None
    if scale is None or side is None or not _near(scale, value_of, float(np.sqrt(2 / np.pi))):
        return []
    inner = _op(side[0], "Add")  # x + 0.044715·x³
    terms = list(inner.inputs) if inner is not None else []
    cubic = [node for node in (_op(v, "Mul") for v in terms) if node is not None and _near(node, value_of, 0.044715)]
    x = next((v for v in terms if v is not None and _op(v, "Mul") not in cubic), None)
    tail = _gelu_tail(tanh, x, value_of)
    return [scale, *cubic, *tail] if tail and cubic else []


def _sigmoid_gate(sigmoid: ir.Node, value_of: ValueOf, rank: RankOf) -> list[ir.Node]:
    scale = _op(sigmoid.inputs[0], "Mul")
    side = _constant_side(scale, value_of) if scale is not None else None
    if side is None or side[1].size != 1:
        return []
    join = _only_user(sigmoid.outputs[0], "Mul")
    return [scale] if scale is not None and join is not None and side[0] in join.inputs else []


def _normalization(sqrt: ir.Node, value_of: ValueOf, rank: RankOf) -> list[ir.Node]:
    epsilon = _op(sqrt.inputs[0], "Add")
    side = _constant_side(epsilon, value_of) if epsilon is not None else None
    if epsilon is None or side is None or side[1].size != 1 or _op(side[0], "ReduceMean") is None:
        return []
    normalize = _only_user(sqrt.outputs[0], "Div")
    reciprocal = _only_user(sqrt.outputs[0], "Reciprocal") if normalize is None else None
    if reciprocal is not None:
        normalize = _only_user(reciprocal.outputs[0], "Mul")
    if normalize is None:
        return []
    gamma = _only_user(normalize.outputs[0], "Mul")
    if gamma is None or _constant_side(gamma, value_of) is None:
        return [epsilon]
    beta = _only_user(gamma.outputs[0], "Add")
    beta = beta if beta is not None and _constant_side(beta, value_of) is not None else None
    return [node for node in (epsilon, gamma, beta) if node is not None]


def _scalar_scales(start: ir.Value | None, value_of: ValueOf) -> list[ir.Node]:
    """The one-number Mul/Div on the way back from `start` through layout nodes (a few steps)."""
    found: list[ir.Node] = []
    value = start
    for _ in range(4):
        node = value.producer() if value is not None else None
        if node is None or not in_default_domain(node):
            break
        side = _constant_side(node, value_of) if node.op_type in ("Mul", "Div") else None
        if side is not None and side[1].size == 1:
            found.append(node)
            value = side[0]
        elif node.op_type in _LAYOUT:
            value = node.inputs[0]
        else:
            break
    return found


def _attention_scaling(softmax: ir.Node, value_of: ValueOf, rank: RankOf) -> list[ir.Node]:
    scales: list[ir.Node] = []
    value = softmax.inputs[0]
    for _ in range(4):  # back from the Softmax: the scale (and a mask Add) on the scores
        node = value.producer() if value is not None else None
        if node is None or not in_default_domain(node):
            return []
        if node.op_type == "MatMul":
            if any(value_of(v) is not None for v in node.inputs):
                return []
            return scales + [n for v in node.inputs for n in _scalar_scales(v, value_of)]
        side = _constant_side(node, value_of) if node.op_type in ("Mul", "Div", "Add") else None
        if node.op_type in ("Mul", "Div") and side is not None and side[1].size == 1:
            scales.append(node)
        value = side[0] if side is not None else (node.inputs[0] if node.op_type in _LAYOUT | {"Add"} else None)
    return []


def _matmul_bias(matmul: ir.Node, value_of: ValueOf, rank: RankOf) -> list[ir.Node]:
    if len(matmul.inputs) != 2 or value_of(matmul.inputs[1]) is None or value_of(matmul.inputs[0]) is not None:
        return []
    if rank(matmul.outputs[0]) == 2:
        return []  # bnfold makes MatMul + Add one Gemm itself (folding/rules/matmul.py)
    add = _only_user(matmul.outputs[0], "Add")
    side = _constant_side(add, value_of) if add is not None else None
    if add is None or side is None or side[1].ndim == 0 or any(d != 1 for d in side[1].shape[:-1]):
        return []
    return [add]


RUNTIME_FUSED: tuple[FusedPattern, ...] = (
    FusedPattern("GELU", "Erf", _gelu_erf),
    FusedPattern("GELU (tanh form)", "Tanh", _gelu_tanh),
    FusedPattern("QuickGELU/Swish", "Sigmoid", _sigmoid_gate),
    FusedPattern("LayerNorm/RMSNorm", "Sqrt", _normalization),
    FusedPattern(
        "attention's score scaling", "Softmax", _attention_scaling, "{name} (runtime fuses it into the MatMul)"
    ),
    FusedPattern("MatMul's bias", "MatMul", _matmul_bias, "{name} (runtime fuses MatMul+Add into Gemm)"),
)


def runtime_fused(graphs: Iterable[ir.Graph], value_of: ValueOf, rank: RankOf) -> dict[ir.Node, str]:
    """Every Mul/Add/Sub/Div of `graphs` that belongs to a pattern onnxruntime fuses -> the report's reason."""
    by_anchor: dict[str, list[FusedPattern]] = {}
    for pattern in RUNTIME_FUSED:
        by_anchor.setdefault(pattern.anchor, []).append(pattern)
    found: dict[ir.Node, str] = {}
    for graph in graphs:
        for node in graph:
            for pattern in by_anchor.get(node.op_type, ()) if in_default_domain(node) else ():
                for member in pattern.match(node, value_of, rank):
                    if member.op_type in ELEMENTWISE_AFFINE:
                        found.setdefault(member, pattern.reason.format(name=pattern.name))
    return found
