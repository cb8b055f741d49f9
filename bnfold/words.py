"""The report's words: how bnfold names nodes, fold targets, outcomes and check results.

Every phrase that the report (its `into` and `reason` fields, the CLI's lines, the
error of a failed check) builds out of parts is made here, from plain values: the
pass, the check and the display hand over names and numbers and get the words back.
A refusal's own reason is written where the refusal is decided (`raise Skip(...)`),
since only that place knows it; how it is combined with others is decided here.
Nothing here imports the rest of bnfold, onnx or onnx-ir: a node is anything with
`op_type` and `name`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol


class Named(Protocol):
    @property
    def op_type(self) -> str: ...
    @property
    def name(self) -> str | None: ...


ACTIONS = ("folded", "kept", "converted", "skipped")  # the report's `action`, in the order it counts them
VERDICTS = {"passed": "passed", "failed": "FAILED", "inconclusive": "INCONCLUSIVE"}

# --- nodes and where they are ------------------------------------------------------------------


def describe(node: Named) -> str:
    """ "Conv 'stem'", or "Conv (unnamed)"."""
    return f"{node.op_type} '{node.name}'" if node.name else f"{node.op_type} (unnamed)"


def record_name(node: Named) -> str:
    """The name a node's record carries: its own, or "(Mul)" when it has none."""
    return node.name or f"({node.op_type})"


def batch_norm(name: str) -> str:
    return f"BatchNormalization '{name}'"


def main_scope() -> str:
    return "main"


def subgraph_scope(name: str | None) -> str:
    return f"subgraph {name or '(unnamed)'}"


def function_scope(domain: str, name: str, subgraph: str | None = None, nested: bool = False) -> str:
    return f"function {domain}::{name}" + (f" {subgraph_scope(subgraph)}" if nested else "")


# --- what a fold went into ---------------------------------------------------------------------


def through(path: Sequence[Named]) -> str:
    """ " (through Transpose 't', Pad 'p')" for the nodes a fold passed, or ""."""
    return f" (through {', '.join(describe(node) for node in path)})" if path else ""


def backward_target(producer: Named, bias_add: Named | None, path: str) -> str:
    """ "MatMul 'q' (and its bias Add 'q_bias')" and the layout nodes passed on the way."""
    return describe(producer) + (f" (and its bias {describe(bias_add)})" if bias_add else "") + path


def concat_slice(producer: Named, start: int, stop: int) -> str:
    return f"{describe(producer)}[{start}:{stop}]"


def targets(names: Iterable[str]) -> str:
    return ", ".join(names)


def with_pattern(into: str, pattern: str) -> str:
    """How an elementwise node that folded away is named where its BN's record mentions it."""
    return f"{into} ({pattern})"


def forward(into: str) -> str:
    return f"{into} (forward)"


def identity_branch(target: str) -> str:
    return f"{target} (identity branch)"


def merged_into(into: str | None, target: str) -> str:
    return f"{into}, merged into {target}"


def kept_batch_norm(absorbed: Sequence[str]) -> str:
    return "BatchNormalization" + (f" (absorbed {', '.join(absorbed)})" if absorbed else "")


def all_folded_elsewhere(elsewhere: Mapping[str, str]) -> str:
    """A BN rewritten as Mul/Add whose every node folded away: "Mul into Conv 'c' (forward); Add into …"."""
    return "; ".join(f"{op} into {where}" for op, where in sorted(elsewhere.items(), reverse=True))


def converted(remaining: Sequence[str], elsewhere: Mapping[str, str]) -> str:
    """ "Mul+Add", or "Add (Mul folded into Conv 'c' (forward))"."""
    into = "+".join(remaining)
    if elsewhere:
        into += " (" + "; ".join(f"{op} folded into {where}" for op, where in elsewhere.items()) + ")"
    return into


def target_kind(pattern: str | None, into: str | None) -> str:
    """'into Conv', 'forward into Gemm', 'into producers behind a Concat', 'as Mul+Add, both folded'."""
    op = (into or "").split(" ")[0]
    kinds = {
        "forward": f"forward into {op}",
        "concat": "into producers behind a Concat",
        "mul-add": "as Mul+Add, both folded",
        "scale-forward": "as Mul+Add, both folded",
        "collapsed": "into a neighbouring BN",
        "reparameterized": "into a Conv of its branches",
    }
    return kinds.get(pattern or "", f"into {op}")


def totals(count: int, counts: Mapping[str, int], folded_into: str = "") -> str:
    """ "12 BatchNormalization: 10 folded (8 into Conv, 2 forward into Gemm), 1 kept, 0 converted, 1 skipped"."""
    folded = f"{counts.get('folded', 0)} folded" + (f" ({folded_into})" if folded_into else "")
    rest = ", ".join(f"{counts.get(action, 0)} {action}" for action in ACTIONS[1:])
    return f"{count} BatchNormalization: {folded}, {rest}"


# --- why a node stays ------------------------------------------------------------------------------


def and_also(reason: str | None, more: str) -> str:
    """A reason with one more said after it."""
    return f"{reason}; {more}" if reason else more


def branch_cannot_merge(reason: str | None, why: str) -> str:
    return and_also(reason, f"its branch cannot merge with the others: {why}")


def cannot_rewrite_as_mul_add(reason: str | None, why: str) -> str:
    return and_also(reason, f"cannot rewrite it as Mul+Add: {why}")


def fails_the_check(site: str, measured: str) -> str:
    """The reason of a fold backed out because a site it feeds failed the check."""
    return f"fails the check at '{site}' ({measured}); left as it was"


def sandwich_fails_the_check(site: str, error: float, allowed: float) -> str:
    return (
        f"folding it across its Casts fails the check at '{site}' (max abs err "
        f"{error:.3e}, allowed {allowed:.3e}); left as it was"
    )


def backed_out(names: Sequence[str]) -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"{len(names)} fold(s) failed the check and were backed out ({shown}); the rest was written (--strict refuses)"
    )


# --- what the check measured -------------------------------------------------------------------


def measured(error: float, allowed: float, noise: float | None, needed_atol: float | None) -> str:
    """ "max abs err 1.2e-05, allowed 3.0e-06, the original's own noise 2.0e-07; passes with --atol 1.2e-05"."""
    own_noise = "" if noise is None else f", the original's own noise {noise:.3e}"
    needed = "" if not needed_atol else f"; passes with --atol {needed_atol:.3e}"
    return f"max abs err {error:.3e}, allowed {allowed:.3e}{own_noise}{needed}"


def check_failed(bn: str | None, kind: str, name: str, channel: int | None, abs_err: float, rel_err: float) -> str:
    """The error of a failed check (exit 1)."""
    where = f"at BatchNormalization {bn}, " if bn else ""
    at_channel = f" channel {channel}" if channel is not None else ""
    return (
        f"check failed {where}{kind} '{name}'{at_channel} differs (max abs err {abs_err:.3e}, "
        f"max rel err {rel_err:.3e}); nothing written"
    )


CHECK_INCONCLUSIVE_STRICT = (
    "check inconclusive: no value a fold changed held evidence (all NaN/Inf, constant "
    "or never reached); nothing written (--strict)"
)
NO_EVIDENCE = "no value a fold changed held evidence: each was all NaN/Inf or the same for every input draw"


def failure_line(kind: str, name: str, bn: str | None, channel: int | None, measured: str, rel_err: float) -> str:
    where = f" (BatchNormalization {bn})" if bn else ""
    at_channel = f" channel {channel}" if channel is not None else ""
    return f"{kind} {name}{where}{at_channel}: {measured}, max rel err {rel_err:.3e}"
