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
3. Collapse: a BN that no move could take absorbs the affine nodes joined to it by
   single-use edges (other such BNs, Mul/Add/Sub/Div by per-channel constants) on
   either side: the chain becomes one BatchNormalization, its parameters the
   composed map computed in float64 and rounded once. A chain never costs more nodes.
4. Convert: when the consumers take a pure scale (a Conv that pads with zeros
   does, the shift it does not), the scale folds forward and the BN becomes one
   Add. Otherwise the BN stays one node (standalone="bn", the default: BN is the one
   ONNX op that applies a per-channel affine map in one pass) or becomes Mul + Add
   (standalone="mul-add", for runtimes without BatchNormalization), and the
   fixpoint runs again.

Every BN gets one record: folded (into what, by which pattern), kept (one BN,
with what it absorbed), converted (into what and why), or skipped (left exactly as
it was), always with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from bnfold import fold_math, reparam
from bnfold.affine import ELEMENTWISE_OPS, AffineParams, read_elementwise
from bnfold.batchnorm import read_params, training_reason
from bnfold.constants import ConstantResolver
from bnfold.errors import InputError
from bnfold.ir_walk import ir_graphs
from bnfold.layout import layout_kind
from bnfold.moves import AffineNode, Folded, fold_backward, fold_forward, prepare_forward
from bnfold.names import NameAuthority
from bnfold.node_attrs import float_attr, in_default_domain, opset_of
from bnfold.report import NodeRecord, Site
from bnfold.rewire import remove_if_dead, take_over_output
from bnfold.rules import standalone
from bnfold.rules.base import FoldContext, describe, rounded
from bnfold.sites import SiteLocator
from bnfold.skip import Skip
from bnfold.value_types import ValueTypes

logger = logging.getLogger(__name__)

MOVES = (fold_backward, fold_forward)
STANDALONE_FORMS = ("bn", "mul-add")


def check_standalone(form: str) -> str:
    if form not in STANDALONE_FORMS:
        raise InputError(f"standalone must be one of {', '.join(STANDALONE_FORMS)}, not '{form}'")
    return form


class BatchNormFoldPass(ir.passes.InPlacePass):
    """Folds BatchNormalization nodes; `records` describes what happened to each.

    `standalone`: what a BN with nothing to fold into becomes, "bn" (one
    BatchNormalization, the default) or "mul-add".
    """

    def __init__(self, standalone: str = "bn", progress=None, bn_only: bool = False,
                 refused: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.standalone = check_standalone(standalone)
        self.bn_only = bn_only  # fold only BNs and the per-channel nodes of their chains
        self.progress = progress  # called as progress("folding", done, total)
        self.refused = dict(refused or {})  # Cast sandwiches (casts.py) not to fold: key -> reason
        self.records: list[NodeRecord] = []
        self.sites: list[Site] = []  # every value a fold changed, for the check
        self.sandwiches: dict[str, list[str]] = {}  # site name -> keys of the Cast sandwich folds it shows

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        run = _Run(model, self.standalone, self.progress, self.bn_only, self.refused)
        run.execute()
        self.records, self.sites = run.records()
        self.sandwiches = run.sandwich_sites
        modified = any(record.action not in ("skipped", "kept") or record.pattern == "collapsed"
                       for record in self.records)
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
    final: NodeRecord | None = None  # set once the BN is folded or given up
    reason: str | None = None  # why the last attempt failed
    absorbed: list[str] = dataclasses.field(default_factory=list)  # neighbours it took in: "Mul 'm'"
    sites: list[ir.Value] = dataclasses.field(default_factory=list)  # values its fold changed
    created: dict[str, ir.Node] = dataclasses.field(default_factory=dict)  # "Mul"/"Add" it became
    elsewhere: dict[str, str] = dataclasses.field(default_factory=dict)  # "Mul"/"Add" -> where it folded
    sandwich: str | None = None  # the key of the Cast sandwich its fold removed

    @property
    def pending(self) -> bool:
        return self.final is None and not self.created


class _Run:
    """One execution of the pass over one model."""

    def __init__(self, model: ir.Model, standalone_form: str, progress=None, bn_only: bool = False,
                 refused: Mapping[str, str] | None = None) -> None:
        self.standalone = standalone_form
        self.bn_only = bn_only
        self.progress = progress
        self.settled = 0  # BNs folded or given up, for progress
        self.model = model
        self.scopes = list(_scopes(model))
        shared = FoldContext(ConstantResolver(model), NameAuthority(model), ValueTypes(model), opset=1,
                             function_graphs=frozenset(s.graph for s in self.scopes if s.in_function),
                             refused=refused or {})
        self.contexts = {s.graph: dataclasses.replace(shared, opset=s.opsets.get("", 1)) for s in self.scopes}
        self.bns: dict[ir.Node, _BnState] = {}
        # with the values each changed, its scope and the key of the Cast sandwich it folded out of
        self.elementwise_records: list[tuple[NodeRecord, list[ir.Value], _Scope, str | None]] = []
        self.sandwich_sites: dict[str, list[str]] = {}  # site name -> Cast sandwich keys, filled by records()
        self.chain: set[ir.Node] = set()  # elementwise nodes that belong to a BN's chain
        self.created_by: dict[ir.Node, _BnState] = {}  # a conversion's Mul/Add -> its BN
        self.superseded: dict[ir.Value, ir.Value] = {}  # a value a later fold changed -> where that shows
        self.elementwise_reasons: dict[ir.Node, tuple[_Scope, str]] = {}  # chain members that stayed
        self.folded_at: dict[ir.Value, list[_BnState]] = {}  # a value a BN's fold changed -> those BNs
        for node, scope in batch_norms(model):
            self.bns[node] = _BnState(node.name or "(unnamed BatchNormalization)", scope)

    def execute(self) -> None:
        for bn, state in self.bns.items():
            self._screen(bn, state)
        self._fixpoint()
        if self._reparameterize():
            self._fixpoint()
        if self._collapse_leftovers():
            self._fixpoint()
        self._convert_leftovers()
        next(iter(self.contexts.values())).types.invalidate()  # shared: the conversions added values
        self._fixpoint()

    def records(self) -> tuple[list[NodeRecord], list[Site]]:
        """BNs in graph order, then the Mul/Add/Sub/Div of their chains: folded, or left with the reason;
        and the sites: every main-graph value a fold changed, with the BN (or chain node) that changed it."""
        locate = SiteLocator(self.model)
        records, claims = [], []
        changed = [(self._bn_record(state), state.sites, state.scope, state.sandwich) for state in self.bns.values()]
        changed += self.elementwise_records
        for record, values, scope, sandwich in changed:
            found = locate(self._current(values), scope.graph, None)
            records.append(dataclasses.replace(record, site=found[0].name) if found else record)
            for site in found if sandwich is not None else ():
                self.sandwich_sites.setdefault(site.name, []).append(sandwich)
            own = record.pattern not in ("forward", "scale-forward")  # the site is its own output, not a consumer's
            claims += [(site, record.name, own) for site in found]
        sites = _attributed(claims)
        records += [_record(node.name or f"({node.op_type})", "skipped", reason=reason, scope=scope, op=node.op_type)
                    for node, (scope, reason) in self.elementwise_reasons.items()
                    if node.graph is not None and node not in self.created_by
                    and self._in_chain(self.contexts[scope.graph], node)]  # others are not about any BN
        return records, sites

    def _screen(self, bn: ir.Node, state: _BnState) -> None:
        context = self.contexts[state.scope.graph]
        opset = opset_of(bn, state.scope.opsets)
        reason = training_reason(bn, opset)
        try:
            if reason is not None:
                raise Skip(reason)
            state.params = read_params(bn, opset, context.resolver, context.types)
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
        if node.op_type in ELEMENTWISE_OPS and (not self.bn_only or self._in_chain(context, node)):
            return self._fold_elementwise(context, node, scope)
        return False

    def _fold_bn(self, context: FoldContext, bn: ir.Node, state: _BnState) -> bool:
        folded, state.reason = _try_moves(context, AffineNode(bn, 0, state.params))
        if folded is None:
            return False
        state.final = _record(state.name, "folded", folded.into, None, state.scope, pattern=folded.pattern)
        state.sites = list(folded.sites)
        state.sandwich = folded.sandwich
        for value in folded.sites:
            self.folded_at.setdefault(value, []).append(state)
        self._supersede(folded)
        self._settle()
        return True

    def _supersede(self, folded: Folded) -> None:
        for value in folded.superseded:
            self.superseded[value] = folded.sites[0]

    def _current(self, values) -> list[ir.Value]:
        """`values`, each replaced by where its computation shows now that later folds changed it."""
        found = []
        for value in values:
            seen = set()
            while value in self.superseded and value not in seen:
                seen.add(value)
                value = self.superseded[value]
            found.append(value)
        return list(dict.fromkeys(found))

    def _settle(self) -> None:
        self.settled += 1
        if self.progress is not None:
            self.progress("folding", self.settled, len(self.bns))

    def _fold_elementwise(self, context: FoldContext, node: ir.Node, scope: _Scope) -> bool:
        try:
            found = read_elementwise(node, context.resolver.value_of, context.types.rank, context.types.dim)
        except Skip as skip:
            self.elementwise_reasons[node] = (scope, skip.reason)
            return False
        folded, reason = _try_moves(context, AffineNode(node, found.data_index, found.params, found.axis))
        if folded is None:
            self.elementwise_reasons[node] = (scope, reason)
            return False
        self._elementwise_gone(node, scope, f"{folded.into} ({folded.pattern})", folded.into, folded.pattern,
                               folded.sites, folded.sandwich)
        self._supersede(folded)
        return True

    def _elementwise_gone(self, node: ir.Node, scope: _Scope, where: str, into: str, pattern: str,
                          sites, sandwich: str | None = None) -> None:
        """Record a Mul/Add/Sub/Div of a chain (or of a BN's conversion) that folded away, changing `sites`."""
        self.elementwise_reasons.pop(node, None)
        owner = self.created_by.get(node)
        if owner is not None:
            owner.elsewhere[node.op_type] = where
            owner.sites.extend(sites)
            return
        record = _record(node.name or f"({node.op_type})", "folded", into, None, scope, pattern=pattern,
                         op=node.op_type)
        self.elementwise_records.append((record, list(sites), scope, sandwich))

    def _in_chain(self, context: FoldContext, node: ir.Node) -> bool:
        """Whether `node` sits in an unbranched run of affine nodes that contains a BN."""
        if node in self.chain:
            return True
        members, touches_bn = _affine_run(context, node, self.bns)
        if touches_bn:
            self.chain.update(members)
        return touches_bn

    # --- reparameterize ----------------------------------------------------------------------------

    def _reparameterize(self) -> bool:
        """Merge Conv/BN/identity branches on one input that an Add/Sum tree sums into one Conv (reparam.py)."""
        merged = False
        for scope in self.scopes:
            for node in list(scope.graph):
                if node.graph is scope.graph and reparam.is_root(node):
                    for root, leaves, sums in reparam.find_trees(node):
                        merged |= self._merge(self.contexts[scope.graph], scope, root, leaves, sums)
        return merged

    def _merge(self, context: FoldContext, scope: _Scope, root: ir.Node, leaves, sums) -> bool:
        try:
            merged = reparam.merge(context, root, leaves, sums, self._pending_params)
        except Skip as skip:
            logger.info("%s keeps its branches: %s", describe(root), skip.reason)
            for leaf in leaves:
                state = self.bns.get(leaf.producer())
                if state is not None and state.pending:
                    state.reason = f"{state.reason}; its branch cannot merge with the others: {skip.reason}"
            return False
        if merged is None:
            return False
        target = describe(merged.target)
        for value in merged.removed:
            self.superseded[value] = merged.output
            for state in self.folded_at.get(value, []):
                state.final = dataclasses.replace(state.final, into=f"{state.final.into}, merged into {target}")
        for bn in merged.bns:
            state = self.bns[bn]
            state.final = _record(state.name, "folded", f"{target} (identity branch)", None, scope,
                                  pattern="reparameterized")
            state.sites = [merged.output]
            self._settle()
        return True

    def _pending_params(self, bn: ir.Node) -> AffineParams | None:
        state = self.bns.get(bn)
        if state is None or not state.pending or state.params.per_element:
            return None
        return state.params

    # --- 3. collapse -------------------------------------------------------------------------------

    def _collapse_leftovers(self) -> bool:
        collapsed = False
        for bn, state in self.bns.items():
            if state.pending and self._refuse_channel_mismatch(bn, state):
                continue
            if state.pending and not state.params.per_element:
                collapsed |= self._collapse(bn, state)
        return collapsed

    def _refuse_channel_mismatch(self, bn: ir.Node, state: _BnState) -> bool:
        """Leave a BN exactly as it is when its parameters do not match its input's channels (as far as inferred)."""
        channels = self.contexts[state.scope.graph].types.dim(bn.inputs[0], 1)
        if state.params.per_element or channels is None or state.params.channels == channels:
            return False
        mismatch = f"parameter shape ({state.params.channels},) does not match channel count {channels}"
        state.final = _record(state.name, "skipped", reason=f"{state.reason}; {mismatch}", scope=state.scope)
        self._settle()
        return True

    def _collapse(self, bn: ir.Node, state: _BnState) -> bool:
        """Absorb the affine neighbours of `bn` into its parameters; False (graph untouched) when there are none."""
        context = self.contexts[state.scope.graph]
        before, after = self._neighbours(context, bn, backward=True), self._neighbours(context, bn, backward=False)
        if not before and not after:
            return False
        try:
            params = state.params
            for _, _, found in before:
                params = found.then(params)
            for _, _, found in after:
                params = params.then(found)
            arrays = _bn_arrays(context, bn, params)
        except Skip as skip:
            logger.info("BatchNormalization %s keeps its neighbours: %s", state.name, skip.reason)
            return False
        if before:
            node, index, _ = before[-1]
            old = bn.inputs[0]
            bn.replace_input_with(0, node.inputs[index])
            remove_if_dead(bn.graph, old)
        if after:
            last = after[-1][0].outputs[0]
            take_over_output(last, bn.outputs[0])
            remove_if_dead(bn.graph, last)
        for index, (role, array) in enumerate(arrays, start=1):
            context.write_input(bn, index, array, role)
        state.sites = [bn.outputs[0]]
        for node, _, _ in before + after:
            state.absorbed.append(describe(node))
            self._absorbed(node, state, bn.outputs[0])
        state.params = params
        return True

    def _neighbours(self, context: FoldContext, bn: ir.Node, backward: bool) -> list:
        """(node, data index, AffineParams) of the affine nodes joined to `bn` by single-use edges, nearest first."""
        found: list = []
        current, data_index = bn, 0
        while True:
            value = current.inputs[data_index] if backward else current.outputs[0]
            neighbour = _single_use_neighbour(value, backward)
            affine = None if neighbour is None else self._leftover_affine(context, neighbour)
            if affine is None or neighbour.graph is not bn.graph or (
                    not backward and neighbour.inputs[affine[0]] is not value):
                return found
            found.append((neighbour, *affine))
            current, data_index = neighbour, affine[0]

    def _leftover_affine(self, context: FoldContext, node: ir.Node) -> tuple[int, AffineParams] | None:
        """(data index, map) of a BN no move took, or of a per-channel Mul/Add/Sub/Div; None otherwise."""
        state = self.bns.get(node)
        if state is not None:
            return (0, state.params) if state.pending and not state.params.per_element else None
        if node.op_type not in ELEMENTWISE_OPS or node in self.created_by:
            return None
        try:
            found = read_elementwise(node, context.resolver.value_of, context.types.rank, context.types.dim)
        except Skip:
            return None
        return (found.data_index, found.params) if found.axis in (1, None) else None

    def _absorbed(self, node: ir.Node, into: _BnState, site: ir.Value) -> None:
        target = f"BatchNormalization '{into.name}'"
        state = self.bns.get(node)
        if state is None:
            self._elementwise_gone(node, into.scope, target, target, "collapsed", [site])
            return
        state.final = _record(state.name, "folded", target, state.reason, state.scope, pattern="collapsed")
        state.sites = [site]
        self._settle()

    # --- 4. convert --------------------------------------------------------------------------------

    def _convert_leftovers(self) -> None:
        for bn, state in self.bns.items():
            if not state.pending:
                continue
            self._settle()
            context = self.contexts[state.scope.graph]
            if self._scale_forward(context, bn, state):
                continue
            if self.standalone == "bn":
                state.final = self._kept(state)
                continue
            try:
                mul, add = standalone.rewrite_as_mul_add(context, bn, state.params)
            except Skip as skip:
                state.final = self._kept(state, f"; cannot rewrite it as Mul+Add: {skip.reason}")
                continue
            self._created(state, mul, add)
            state.sites = [add.outputs[0]]

    def _scale_forward(self, context: FoldContext, bn: ir.Node, state: _BnState) -> bool:
        """Fold the scale forward into consumers that take no shift (a Conv padding with zeros); the BN becomes Add."""
        params = state.params
        if params.per_element or not params.has_shift or np.any(params.scale == 0):
            return False
        try:
            scale = AffineNode(bn, 0, AffineParams(params.scale, 0 * params.shift))
            commit, into, consumers = prepare_forward(context, scale)
            add = standalone.rewrite_as_shift(context, bn, params)
        except Skip:
            return False
        commit()
        self._created(state, add)
        state.elsewhere["Mul"] = f"{into} (forward)"
        state.sites = list(consumers)  # not the Add's output: without the scale it is not the BN's output
        return True

    def _created(self, state: _BnState, *nodes: ir.Node) -> None:
        for node in nodes:
            state.created[node.op_type] = node
            self.chain.add(node)
            self.created_by[node] = state

    def _kept(self, state: _BnState, note: str = "") -> NodeRecord:
        into = "BatchNormalization" + (f" (absorbed {', '.join(state.absorbed)})" if state.absorbed else "")
        return _record(state.name, "kept", into, f"{state.reason}{note}", state.scope,
                       pattern="collapsed" if state.absorbed else None)

    def _bn_record(self, state: _BnState) -> NodeRecord:
        if state.final is not None:
            return state.final
        pattern = "mul-add" if "Mul" in state.created else "scale-forward"
        remaining = [op for op in state.created if op not in state.elsewhere]
        if not remaining:  # everything it became folded away too
            into = "; ".join(f"{op} into {where}" for op, where in sorted(state.elsewhere.items(), reverse=True))
            return _record(state.name, "folded", into, state.reason, state.scope, pattern=pattern)
        into = "+".join(remaining)
        if state.elsewhere:
            into += " (" + "; ".join(f"{op} folded into {where}" for op, where in state.elsewhere.items()) + ")"
        return _record(state.name, "converted", into, state.reason, state.scope, pattern=pattern)


def _attributed(claims: list[tuple[Site, str, bool]]) -> list[Site]:
    """One Site per value, naming every node whose fold changed it: those whose own output it is first."""
    names: dict[str, list[str]] = {}
    first: dict[str, Site] = {}
    for site, name, _ in sorted(claims, key=lambda claim: not claim[2]):
        first.setdefault(site.name, site)
        if name not in names.setdefault(site.name, []):
            names[site.name].append(name)
    order = list(dict.fromkeys(site.name for site, _, _ in claims))
    return [dataclasses.replace(first[n], bn=", ".join(names[n])) for n in order]


def _single_use_neighbour(value: ir.Value | None, backward: bool) -> ir.Node | None:
    """The producer (backward) or the one consumer (forward) of `value`, when `value` is that edge's only use."""
    if value is None or value.is_graph_output() or len(value.uses()) != 1:
        return None
    return value.producer() if backward else next(iter(value.uses())).node


def _bn_arrays(context: FoldContext, bn: ir.Node, params: AffineParams) -> list[tuple[str, np.ndarray]]:
    """The BN's four parameters computing `params` exactly, each rounded once to its current dtype."""
    values = fold_math.bn_parameters(params.scale, params.shift, float_attr(bn, "epsilon", 1e-5))
    roles = ("scale", "B", "input_mean", "input_var")
    return [(role, rounded(array, context.resolver.value_of(bn.inputs[index])))
            for index, (role, array) in enumerate(zip(roles, values, strict=True), start=1)]


def _try_moves(context: FoldContext, affine: AffineNode) -> tuple[Folded | None, str | None]:
    reasons = []
    for move in MOVES:
        try:
            return move(context, affine), None
        except Skip as skip:
            reasons.append(skip.reason)
    return None, "; ".join(reasons)


def _affine_run(context: FoldContext, node: ir.Node, bns) -> tuple[set[ir.Node], bool]:
    """The elementwise-with-constant nodes linked to `node` by single-use edges (also through layout and
    transparent nodes), and whether a BN is among them."""
    members, touches_bn = {node}, False
    value = _data_input(context, node)
    while value is not None and len(value.uses()) == 1:  # backward, through the data input
        producer = value.producer()
        if producer is None:
            break
        if producer in bns:
            touches_bn = True
            break
        if layout_kind(context, producer) is not None:
            value = producer.inputs[0]
            continue
        if not _is_elementwise_candidate(context, producer):
            break
        members.add(producer)
        value = _data_input(context, producer)
    value = node.outputs[0]
    while not value.is_graph_output() and len(value.uses()) == 1:  # forward, through the single consumer
        consumer = next(iter(value.uses())).node
        if consumer in bns:
            touches_bn = True
            break
        if layout_kind(context, consumer) is not None and consumer.inputs[0] is value:
            value = consumer.outputs[0]
            continue
        if not _is_elementwise_candidate(context, consumer) or _data_input(context, consumer) is not value:
            break
        members.add(consumer)
        value = consumer.outputs[0]
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
            pattern: str | None = None, op: str = "BatchNormalization") -> NodeRecord:
    logger.info("%s %s: %s %s", op, name, action, into or reason)
    return NodeRecord(name=name, action=action, into=into, reason=reason, graph=scope.label if scope else "main",
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
    for graph, function in ir_graphs(model):
        if function is None:
            label = "main" if graph is model.graph else f"subgraph {graph.name or '(unnamed)'}"
            yield _Scope(graph, label, opsets, False)
            continue
        label = f"function {function.domain}::{function.name}"
        if graph is not function.graph:
            label += f" subgraph {graph.name or '(unnamed)'}"
        yield _Scope(graph, label, dict(function.opset_imports) or opsets, True)
