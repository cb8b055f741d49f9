"""The BatchNormalization folding pass over an onnx-ir model.

Scopes: the main graph, every subgraph (If/Loop/Scan bodies) and every
model-local function body (folded in place, never inlined).

1. Each BN is screened once: one that does not compute its frozen inference map
   (training mode, optional outputs in use) or whose parameters are not usable
   constants is left exactly as it is, with the reason.
2. Fixpoint: every remaining BN, and every Mul/Add/Sub/Div by a per-channel
   constant in a BN's chain, is offered to the moves (moves.py): backward into its
   producer (or the producers behind a channel Concat), then forward into its
   consumers. Sweeps repeat until nothing changes, so chains such as
   Conv → Mul → BN, BN → BN, or BN → Mul → Conv fold completely.
3. BNs that no move could take become Mul + Add (unless keep_standalone); the
   fixpoint runs again, since a Mul alone may fold where the BN could not (a pure
   scale folds forward into a Conv that pads its input with zeros; the shift cannot).

Every BN gets one record: folded (into what, by which pattern), converted (and
what became of its Mul and Add), or skipped, always with the reason.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir

from bnfold.affine import ELEMENTWISE_OPS, AffineParams, Skip, read_elementwise
from bnfold.batchnorm import read_params, training_reason
from bnfold.graph import ConstantResolver, NameAuthority, TypeHints, in_default_domain, model_graphs, opset_of
from bnfold.moves import AffineNode, Folded, fold_backward, fold_forward
from bnfold.report import BnRecord
from bnfold.rules import standalone
from bnfold.rules.base import FoldContext

logger = logging.getLogger(__name__)

MOVES = (fold_backward, fold_forward)


class BatchNormFoldPass(ir.passes.InPlacePass):
    """Folds BatchNormalization nodes; `records` describes what happened to each."""

    def __init__(self, keep_standalone: bool = False, progress=None) -> None:
        super().__init__()
        self.keep_standalone = keep_standalone
        self.progress = progress  # called as progress("folding", done, total)
        self.records: list[BnRecord] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        run = _Run(model, self.keep_standalone, self.progress)
        run.execute()
        self.records = run.records()
        modified = any(record.action != "skipped" for record in self.records)
        return ir.passes.PassResult(model, modified)


@dataclasses.dataclass(frozen=True)
class _Scope:
    graph: ir.Graph
    label: str  # shown in the report: "main", "subgraph body", "function local::ConvBn"
    opsets: dict
    in_function: bool


@dataclasses.dataclass
class _BnState:
    name: str
    scope: _Scope
    params: AffineParams | None = None
    final: BnRecord | None = None  # set once the BN is folded or given up
    reason: str | None = None  # why the last attempt failed
    rewrite: tuple[ir.Node, ir.Node] | None = None  # its Mul and Add, once converted
    later: dict[str, str] = dataclasses.field(default_factory=dict)  # "Mul"/"Add" -> where it folded

    @property
    def pending(self) -> bool:
        return self.final is None and self.rewrite is None


class _Run:
    """One execution of the pass over one model."""

    def __init__(self, model: ir.Model, keep_standalone: bool, progress=None) -> None:
        self.keep_standalone = keep_standalone
        self.progress = progress
        self.settled = 0  # BNs folded or given up, for progress
        self.scopes = list(_scopes(model))
        shared = FoldContext(ConstantResolver(model), NameAuthority(model), TypeHints(model), opset=1,
                             function_graphs=frozenset(s.graph for s in self.scopes if s.in_function))
        self.contexts = {s.graph: dataclasses.replace(shared, opset=s.opsets.get("", 1)) for s in self.scopes}
        self.bns: dict[ir.Node, _BnState] = {}
        self.elementwise_records: list[BnRecord] = []
        self.chain: set[ir.Node] = set()  # elementwise nodes that belong to a BN's chain
        self.rewrite_of: dict[ir.Node, _BnState] = {}  # a rewrite's Mul/Add -> its BN
        self.elementwise_reasons: dict[ir.Node, tuple[_Scope, str]] = {}  # chain members that stayed
        for node, scope in batch_norms(model):
            self.bns[node] = _BnState(node.name or "(unnamed BatchNormalization)", scope)

    def execute(self) -> None:
        for bn, state in self.bns.items():
            self._screen(bn, state)
        self._fixpoint()
        self._rewrite_leftovers()
        next(iter(self.contexts.values())).hints.invalidate()  # shared: the rewrites added values
        self._fixpoint()

    def records(self) -> list[BnRecord]:
        """BNs in graph order, then the Mul/Add/Sub/Div of their chains: folded, or left with the reason."""
        left = [_record(node.name or f"({node.op_type})", "skipped", reason=reason, scope=scope, op=node.op_type)
                for node, (scope, reason) in self.elementwise_reasons.items()
                if node.graph is not None and node not in self.rewrite_of]
        return [self._bn_record(state) for state in self.bns.values()] + self.elementwise_records + left

    def _screen(self, bn: ir.Node, state: _BnState) -> None:
        context = self.contexts[state.scope.graph]
        opset = opset_of(bn, state.scope.opsets)
        reason = training_reason(bn, opset)
        try:
            if reason is not None:
                raise Skip(reason)
            state.params = read_params(bn, opset, context.resolver, context.hints)
        except Skip as skip:
            state.final = _record(state.name, "skipped", reason=skip.reason, scope=state.scope)
            self._settle()

    def _fixpoint(self) -> None:
        changed = True
        while changed:
            changed = False
            for scope in self.scopes:
                for node in list(scope.graph):
                    if node.graph is scope.graph:
                        changed |= self._offer(self.contexts[scope.graph], node, scope)

    def _offer(self, context: FoldContext, node: ir.Node, scope: _Scope) -> bool:
        state = self.bns.get(node)
        if state is not None:
            return state.pending and self._fold_bn(context, node, state)
        if node.op_type in ELEMENTWISE_OPS and self._in_chain(context, node):
            return self._fold_elementwise(context, node, scope)
        return False

    def _fold_bn(self, context: FoldContext, bn: ir.Node, state: _BnState) -> bool:
        folded, state.reason = _try_moves(context, AffineNode(bn, 0, state.params))
        if folded is None:
            return False
        state.final = _record(state.name, "folded", folded.into, None, state.scope, pattern=folded.pattern)
        self._settle()
        return True

    def _settle(self) -> None:
        self.settled += 1
        if self.progress is not None:
            self.progress("folding", self.settled, len(self.bns))

    def _fold_elementwise(self, context: FoldContext, node: ir.Node, scope: _Scope) -> bool:
        try:
            found = read_elementwise(node, context.resolver.value_of, context.hints.rank,
                                     lambda value: context.hints.dim(value, 1))
        except Skip as skip:
            self.elementwise_reasons[node] = (scope, skip.reason)
            return False
        op, name = node.op_type, node.name or f"({node.op_type})"
        folded, reason = _try_moves(context, AffineNode(node, found.data_index, found.params))
        if folded is None:
            self.elementwise_reasons[node] = (scope, reason)
            return False
        self.elementwise_reasons.pop(node, None)
        owner = self.rewrite_of.get(node)
        if owner is not None:
            owner.later[op] = f"{folded.into} ({folded.pattern})"
        else:
            self.elementwise_records.append(
                _record(name, "folded", folded.into, None, scope, pattern=folded.pattern, op=op))
        return True

    def _in_chain(self, context: FoldContext, node: ir.Node) -> bool:
        """Whether `node` sits in an unbranched run of affine nodes that contains a BN."""
        if node in self.chain:
            return True
        members, touches_bn = _affine_run(context, node, self.bns)
        if touches_bn:
            self.chain.update(members)
        return touches_bn

    def _rewrite_leftovers(self) -> None:
        for bn, state in self.bns.items():
            if not state.pending:
                continue
            self._settle()
            if self.keep_standalone:
                state.final = _record(state.name, "skipped", reason=f"{state.reason}; kept as BN (keep_standalone)",
                                      scope=state.scope)
                continue
            try:
                mul, add = standalone.rewrite(self.contexts[state.scope.graph], bn, state.params,
                                              shift_first=_feeds_only_convs(bn))
            except Skip as skip:
                state.final = _record(state.name, "skipped", reason=f"{state.reason}; cannot rewrite: {skip.reason}",
                                      scope=state.scope)
                continue
            state.rewrite = (mul, add)
            self.chain.update((mul, add))
            self.rewrite_of.update({mul: state, add: state})

    def _bn_record(self, state: _BnState) -> BnRecord:
        if state.final is not None:
            return state.final
        if len(state.later) == 2:  # its Mul and its Add both folded away after the rewrite
            into = "; ".join(f"{op} into {where}" for op, where in sorted(state.later.items(), reverse=True))
            return _record(state.name, "folded", into, state.reason, state.scope, pattern="mul-add")
        if state.later:
            (folded_op, where), = state.later.items()
            kept = "Add" if folded_op == "Mul" else "Mul"
            into = f"{kept} ({folded_op} folded into {where})"
            return _record(state.name, "converted", into, state.reason, state.scope, pattern="mul-add")
        return _record(state.name, "converted", "Mul+Add", state.reason, state.scope, pattern="mul-add")


def _feeds_only_convs(node: ir.Node) -> bool:
    uses = list(node.outputs[0].uses())
    return bool(uses) and not node.outputs[0].is_graph_output() and all(
        use.node.op_type == "Conv" and use.idx == 0 for use in uses)


def _try_moves(context: FoldContext, affine: AffineNode) -> tuple[Folded | None, str | None]:
    reasons = []
    for move in MOVES:
        try:
            return move(context, affine), None
        except Skip as skip:
            reasons.append(skip.reason)
    return None, "; ".join(reasons)


def _affine_run(context: FoldContext, node: ir.Node, bns) -> tuple[set[ir.Node], bool]:
    """The elementwise-with-constant nodes linked to `node` by single-use edges, and whether a BN is among them."""
    members, touches_bn = {node}, False
    current = node
    while True:  # backward, through the data input
        data = _data_input(context, current)
        producer = None if data is None or len(data.uses()) != 1 else data.producer()
        if producer is None:
            break
        if producer in bns:
            touches_bn = True
            break
        if not _is_elementwise_candidate(context, producer):
            break
        members.add(producer)
        current = producer
    current = node
    while True:  # forward, through the single consumer
        output = current.outputs[0]
        uses = list(output.uses())
        if output.is_graph_output() or len(uses) != 1:
            break
        consumer = uses[0].node
        if consumer in bns:
            touches_bn = True
            break
        if not _is_elementwise_candidate(context, consumer) or _data_input(context, consumer) is not output:
            break
        members.add(consumer)
        current = consumer
    return members, touches_bn


def _is_elementwise_candidate(context: FoldContext, node: ir.Node) -> bool:
    return (node.op_type in ELEMENTWISE_OPS and in_default_domain(node) and len(node.inputs) == 2
            and _data_input(context, node) is not None)


def _data_input(context: FoldContext, node: ir.Node) -> ir.Value | None:
    """The one non-constant input of a two-input elementwise node, or None."""
    if len(node.inputs) != 2 or any(value is None for value in node.inputs):
        return None
    constant = [context.resolver.value_of(value) is not None for value in node.inputs]
    if constant.count(True) != 1:
        return None
    return node.inputs[constant.index(False)]


def _record(name: str, action, into: str | None = None, reason: str | None = None, scope: _Scope | None = None,
            pattern: str | None = None, op: str = "BatchNormalization") -> BnRecord:
    logger.info("%s %s: %s %s", op, name, action, into or reason)
    return BnRecord(name=name, action=action, into=into, reason=reason, graph=scope.label if scope else "main",
                    pattern=pattern, op=op)


def _is_batch_norm(node: ir.Node) -> bool:
    return node.op_type == "BatchNormalization" and in_default_domain(node)


def batch_norms(model: ir.Model):
    """(node, scope) for every BatchNormalization, in the order the report lists them."""
    for scope in _scopes(model):
        for node in scope.graph:
            if _is_batch_norm(node):
                yield node, scope


def _scopes(model: ir.Model):
    """A scope for the main graph, its subgraphs (If/Loop/Scan bodies), and every function body."""
    opsets = dict(model.opset_imports)
    for graph, function in model_graphs(model):
        if function is None:
            label = "main" if graph is model.graph else f"subgraph {graph.name or '(unnamed)'}"
            yield _Scope(graph, label, opsets, False)
            continue
        label = f"function {function.domain}::{function.name}"
        if graph is not function.graph:
            label += f" subgraph {graph.name or '(unnamed)'}"
        yield _Scope(graph, label, dict(function.opset_imports) or opsets, True)
