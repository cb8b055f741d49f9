"""What every rule shares: what a rule is, rounding folded tensors once, two-phase commits.

A rule's `prepare(ctx, node, params)` checks everything and computes the new
tensors without touching the graph; it returns a Commit that writes them. Moves
that fold into several nodes at once prepare all of them before committing any,
so a refusal anywhere leaves the graph exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnfold.folding import fold_math
from bnfold.folding.affine import AffineParams
from bnfold.folding.context import FoldContext
from bnfold.graph.skip import Skip

Commit = Callable[[], None]


def channel_axis(ctx: FoldContext, node: ir.Node) -> int | None:
    """Output features along axis 1 (NCHW…): the convolutions'."""
    return 1


@dataclass(frozen=True)
class ProducerRule:
    """A linear op that an affine map following it folds into (the backward move).

    `op_types`: the default-domain ops it handles. `weight_input`: the input holding its
    weight. `output_channels(ctx, node)`: how many output features it has.
    `feature_axis(ctx, node)`: the output axis they run along (None when unknown), which
    the affine map's channel axis must land on. `prepare(ctx, node, params)`: check the
    fold of `params` and return the Commit that writes it (Skip with the reason).
    """

    op_types: tuple[str, ...]
    weight_input: int
    output_channels: Callable[[FoldContext, ir.Node], int]
    prepare: Callable[[FoldContext, ir.Node, AffineParams], Commit]
    feature_axis: Callable[[FoldContext, ir.Node], int | None] = channel_axis


@dataclass(frozen=True)
class ConsumerRule:
    """A linear op that an affine map before it folds into (the forward move): `prepare(ctx, node, params)`."""

    op_types: tuple[str, ...]
    prepare: Callable[[FoldContext, ir.Node, AffineParams], Commit]


def _overflow_is_skip(
    fold: Callable[[], tuple[np.ndarray, np.ndarray | None]],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run a fold that rounds its weight as it computes it: an overflow refuses the fold, as in `rounded`."""
    try:
        return fold()
    except fold_math.FoldOverflowError as error:
        raise Skip(str(error)) from None


def rounded(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Round a float64 fold result once to the dtype of the tensor it replaces."""
    try:
        return fold_math.round_to(values, like.dtype)
    except fold_math.FoldOverflowError as error:
        raise Skip(str(error)) from None


def folded_commit(
    ctx: FoldContext,
    node: ir.Node,
    fold: Callable[[], tuple[np.ndarray, np.ndarray | None]],
    weight: np.ndarray,
    bias_like: np.ndarray,
    *,
    roles: tuple[str, str] = ("weight", "bias"),
    write_bias: bool = True,
    before: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
    bias_alone: Callable[[], np.ndarray] | None = None,
    factors: np.ndarray | None = None,
    bias_input: int = 2,
) -> Commit:
    """Check a fold now (it may overflow: Skip), and return the Commit that writes it.

    `fold()` gives (new weight, new bias) in float64 for inputs 1 and `bias_input` of `node`.
    It is kept as the recipe for the weight: a large weight whose source is memory
    mapped is recomputed while the output is written instead of being held in memory.
    When the fold multiplies each weight element by one of `factors` and
    `bias_alone()` gives the new bias without the weight, such a weight is not
    computed now at all: a bound on its values shows it cannot overflow.
    The bias is written first: that may free the weight of a second user (a Shape
    feeding the old bias), so the weight keeps its name.
    """
    new_weight: np.ndarray | None
    new_bias: np.ndarray | None
    if (
        bias_alone is not None
        and factors is not None
        and ctx.defers(node, 1)
        and fold_math.product_fits(weight, factors, weight.dtype)
    ):
        new_weight, new_bias = None, rounded(bias_alone(), bias_like)
    else:
        folded_weight, folded_bias = _overflow_is_skip(fold)
        new_weight = rounded(folded_weight, weight)
        new_bias = rounded(folded_bias, bias_like) if write_bias and folded_bias is not None else None

    def make_weight() -> np.ndarray:
        return rounded(_overflow_is_skip(fold)[0], weight)

    def commit() -> None:
        if before is not None:
            before()
        if write_bias:
            ctx.write_input(node, bias_input, new_bias, roles[1])
        ctx.write_input(node, 1, new_weight, roles[0], recompute=make_weight, like=weight)
        if after is not None:
            after()

    return commit
