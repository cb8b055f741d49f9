"""What a BatchNormalization computes at inference, with its own numbers.

The questions people ask most about BN at inference, answered for one node:

* ε sits inside the square root: y = γ·(x − μ)/√(σ² + ε) + β, so with μ = 0,
  σ² = 1, γ = 1, β = 0 and ε = 1e-3 the output is 0.9995004·x, not x.
* Inference uses the running (moving) mean and variance stored in the model, not
  the statistics of the batch being processed (unless the node is in training mode).

Then its numbers (γ, β, μ, σ², ε and the folded s, t) and the diagnostics of
folding/diagnosis.py: where ε dominates σ², dead channels, float16 overflow risk.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from bnfold.errors import InputError
from bnfold.folding.diagnosis import DEAD_GAMMA, EPSILON_DOMINANCE, FLOAT16_MAX, BnNumbers, Diagnosis, study
from bnfold.graph.constant_eval import ConstantResolver
from bnfold.report import NodeRecord


@dataclass(frozen=True)
class Explanation:
    name: str
    index: int
    graph: str
    input_name: str
    numbers: BnNumbers | None
    diagnosis: Diagnosis
    plan: NodeRecord

    def render(self, rows: int = 16) -> str:
        return "\n".join(_render(self, rows))

    def to_dict(self) -> dict:
        numbers = None
        if self.numbers is not None:
            arrays = {
                name: getattr(self.numbers, name).reshape(-1).tolist()
                for name in ("gamma", "beta", "mean", "var", "scale", "shift")
            }
            numbers = {"epsilon": self.numbers.epsilon, **arrays}
        return {
            "name": self.name,
            "index": self.index,
            "graph": self.graph,
            "input": self.input_name,
            "numbers": numbers,
            "diagnostics": self.diagnosis.to_dict(),
            "plan": asdict(self.plan),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)


def explain(source: str | os.PathLike, node: str) -> Explanation:
    """Explain the BatchNormalization `node` (a name, or its index in the report's order) of the model at `source`."""
    from bnfold.folding.fold_pass import batch_norms, run_pass  # the plan: what the pass does with it
    from bnfold.model_io.model_file import ModelFile

    model = ModelFile.open(source).load()
    found = list(batch_norms(model))
    index = _find(found, node)
    bn, scope = found[index]
    numbers, diagnosis = study(ConstantResolver(model), bn, scope)
    input_name = bn.inputs[0].name if bn.inputs and bn.inputs[0] is not None else "?"
    name = bn.name or "(unnamed BatchNormalization)"
    plan = run_pass(model).records[index]
    return Explanation(name, index, scope.label, input_name, numbers, diagnosis, plan)


def _find(found: list, node: str) -> int:
    names = [bn.name for bn, _ in found]
    if node in names:
        return names.index(node)
    if node.lstrip("-").isdigit() and -len(found) <= int(node) < len(found):
        return int(node) % len(found)
    shown = ", ".join(repr(n) for n in names[:8]) + (", …" if len(names) > 8 else "")
    raise InputError(f"no BatchNormalization named or numbered '{node}' ({len(found)} in the model: {shown})")


def _render(explanation: Explanation, rows: int) -> list[str]:
    numbers, diagnosis, plan = explanation.numbers, explanation.diagnosis, explanation.plan
    lines = [
        f"BatchNormalization '{explanation.name}' (#{explanation.index}, {explanation.graph}), "
        f"input '{explanation.input_name}'"
    ]
    if numbers is None:
        return [*lines, f"  its parameters cannot be read: {diagnosis.unreadable}", f"  bnfold: {_plan(plan)}"]
    lines += [
        f"  y = γ·(x − μ) / √(σ² + ε) + β      ε = {numbers.epsilon:.7g}, inside the square root",
        "    = s·x + t                          s = γ / √(σ² + ε),  t = β − μ·s",
    ]
    if diagnosis.training:
        lines.append(
            f"  {diagnosis.training}: it normalizes with the mean and variance of each batch it sees, "
            "not the running statistics below"
        )
    else:
        lines.append(
            "  at inference it uses the running mean μ and variance σ² stored in the model, "
            "not the statistics of the batch it sees"
        )
    lines += [f"  bnfold: {_plan(plan)}", ""]
    lines += _table(numbers, rows)
    lines += ["", "  diagnostics:", *_diagnosis_lines(diagnosis)]
    return lines


def _plan(plan: NodeRecord) -> str:
    if plan.action == "folded":
        return f"folded into {plan.into} ({plan.pattern})"
    if plan.action == "converted":
        return f"converted into {plan.into}: {plan.reason}"
    if plan.action == "kept":
        return f"kept as {plan.into}: {plan.reason}"
    return f"skipped, left as it is: {plan.reason}"


def _table(numbers: BnNumbers, rows: int) -> list[str]:
    columns = ("γ", "β", "μ", "σ²", "s", "t")
    arrays = [
        a.reshape(-1) for a in (numbers.gamma, numbers.beta, numbers.mean, numbers.var, numbers.scale, numbers.shift)
    ]
    count = arrays[0].size
    lines = ["  channel" + "".join(f"{c:>14}" for c in columns)]
    for channel in range(min(count, rows)):
        lines.append(f"  {channel:>7}" + "".join(f"{a[channel]:>14.7g}" for a in arrays))
    if count > rows:
        lines.append(f"  … {count - rows} more channels")
    plural = "s" if count > 1 else ""
    lines.append(
        f"  {count} channel{plural}; s from {np.min(arrays[4]):.7g} to {np.max(arrays[4]):.7g} "
        f"(median {np.median(arrays[4]):.7g}); t from {np.min(arrays[5]):.7g} to {np.max(arrays[5]):.7g}"
    )
    return lines


def _diagnosis_lines(diagnosis: Diagnosis) -> list[str]:
    return [
        _listed(f"ε dominates σ² (σ² < {EPSILON_DOMINANCE:g}·ε, so ε sets the scale)", diagnosis.epsilon_dominates),
        _listed(f"dead: γ ≈ 0 (|γ| < {DEAD_GAMMA:g}; the channel outputs β whatever its input)", diagnosis.dead),
        _listed(f"fp16 overflow risk after folding (|s|·max|W| > {FLOAT16_MAX:g})", diagnosis.fp16_overflow),
    ]


def _listed(what: str, channels: list[int]) -> str:
    if not channels:
        return f"    {what}: no channel"
    shown = ", ".join(str(c) for c in channels[:12]) + (", …" if len(channels) > 12 else "")
    return f"    {what}: {len(channels)} channel{'s' if len(channels) > 1 else ''} ({shown})"
