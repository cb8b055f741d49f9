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
3. Reparameterize: Conv, BN and identity branches on one input that an Add/Sum/Sub
   tree sums become one Conv (reparam.py), and the fixpoint runs again; repeated
   while merges happen (a merged Conv may take a Mul, then join an outer sum).
4. Collapse: a BN that no move could take absorbs the affine nodes joined to it by
   single-use edges on either side (standalone.py).
5. Convert: when the consumers take a pure scale (a Conv that pads with zeros
   does, the shift it does not), the scale folds forward and the BN becomes one
   Add. Otherwise the BN stays one node (standalone="bn", the default: BN is the one
   ONNX op that applies a per-channel affine map in one pass) or becomes Mul + Add
   (standalone="mul-add", for runtimes without BatchNormalization), and the
   fixpoint runs again.

Every BN gets one record (ledger.py): folded, kept, converted or skipped, always
with the reason. `run_pass` returns the folded model with the records, the sites
the check compares, and the Cast sandwich folds it made.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from bnfold import words
from bnfold.folding import reparam, standalone
from bnfold.folding.affine import AffineParams, read_elementwise
from bnfold.folding.affine_runs import affine_run
from bnfold.folding.batchnorm import read_params, training_reason
from bnfold.folding.context import FoldContext
from bnfold.folding.ledger import BnState, Ledger, Scope
from bnfold.folding.moves import AffineNode, Folded, fold_backward, fold_forward, prepare_forward
from bnfold.folding.options import PassOptions, refusal_key
from bnfold.folding.runtime_fusions import runtime_fused
from bnfold.graph.constant_eval import ConstantResolver
from bnfold.graph.fresh_names import NameAuthority
from bnfold.graph.ir_walk import ir_graphs
from bnfold.graph.node_attrs import in_default_domain, opset_of
from bnfold.graph.op_types import ELEMENTWISE_AFFINE
from bnfold.graph.skip import Skip
from bnfold.graph.value_types import ValueTypes
from bnfold.report import NodeRecord, Site
from bnfold.words import describe

logger = logging.getLogger(__name__)

MOVES = (fold_backward, fold_forward)
Progress = Callable[[str, int, int], None]


class FoldOutcome(NamedTuple):
    model: ir.Model
    records: list[NodeRecord]
    sites: list[Site]  # every main-graph value a fold changed: what the check compares
    sandwiches: dict[str, list[str]]  # site name -> the Cast sandwich folds (keys) it shows


def run_pass(model: ir.Model, options: PassOptions = PassOptions(), progress: Progress | None = None) -> FoldOutcome:
    """Fold `model` in place; the records, sites and Cast sandwich folds come back with it."""
    run = _Run(model, options, progress)
    run.execute()
    return FoldOutcome(model, *run.results())


class BatchNormFoldPass(ir.passes.InPlacePass):
    """The pass for onnx-ir's PassManager; after it ran, `records`, `sites` and `sandwiches` describe it.

    `standalone`: what a BN with nothing to fold into becomes, "bn" (one
    BatchNormalization, the default) or "mul-add".
    """

    def __init__(
        self,
        standalone: str = "bn",
        progress: Progress | None = None,
        bn_only: bool = False,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.options = PassOptions(standalone, bn_only, dict(refused or {}))
        self.progress = progress  # called as progress("folding", done, total)
        self.records: list[NodeRecord] = []
        self.sites: list[Site] = []
        self.sandwiches: dict[str, list[str]] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        _, self.records, self.sites, self.sandwiches = run_pass(model, self.options, self.progress)
        modified = any(
            record.action not in ("skipped", "kept") or record.pattern == "collapsed" for record in self.records
        )
        return ir.passes.PassResult(model, modified)


class _Run:
    """One execution of the pass over one model."""

    def __init__(self, model: ir.Model, options: PassOptions, progress: Progress | None = None) -> None:
        self.options = options
        self.model = model
        self.scopes = list(_scopes(model))
        shared = FoldContext(
            ConstantResolver(model),
            NameAuthority(model),
            ValueTypes(model),
            opset=1,
            function_graphs=frozenset(s.graph for s in self.scopes if s.in_function),
            refused=options.refused,
        )
        shared = dataclasses.replace(
            shared,
            runtime_fused=runtime_fused((s.graph for s in self.scopes), shared.resolver.value_of, shared.types.rank),
        )
        self.contexts = {s.graph: dataclasses.replace(shared, opset=s.opsets.get("", 1)) for s in self.scopes}
        bns = {node: BnState(node.name or "(unnamed BatchNormalization)", scope) for node, scope in batch_norms(model)}
        self.ledger = Ledger(bns, progress)

    def execute(self) -> None:
        for bn, state in self.ledger.bns.items():
            self._screen(bn, state)
        self._fixpoint()
        while self._reparameterize():  # a merged Conv may take a Mul, then join an outer sum
            self._fixpoint()
        if standalone.collapse_leftovers(self.ledger, self.contexts):
            self._fixpoint()
        self._convert_leftovers()
        next(iter(self.contexts.values())).types.invalidate()  # shared: the conversions added values
        self._fixpoint()

    def results(self) -> tuple[list[NodeRecord], list[Site], dict[str, list[str]]]:
        return self.ledger.records(self.model, lambda scope, node: self._in_chain(self.contexts[scope.graph], node))

    def _screen(self, bn: ir.Node, state: BnState) -> None:
        context = self.contexts[state.scope.graph]
        opset = opset_of(bn, state.scope.opsets)
        reason = training_reason(bn, opset) or self.options.refused.get(refusal_key(state.name))
        try:
            if reason is not None:
                raise Skip(reason)
            state.params = read_params(bn, opset, context.resolver, context.types)
        except Skip as skip:
            self.ledger.bn_given_up(state, skip.reason)

    def _fixpoint(self) -> None:
        changed = True
        while changed:
            changed = False
            for scope in self.scopes:
                for node in list(scope.graph):
                    if node.graph is scope.graph:
                        changed |= self._offer(self.contexts[scope.graph], node, scope)

    def _offer(self, context: FoldContext, node: ir.Node, scope: Scope) -> bool:
        state = self.ledger.bns.get(node)
        if state is not None:
            return state.pending and self._fold_bn(context, node, state)
        if node.op_type in ELEMENTWISE_AFFINE and (not self.options.bn_only or self._in_chain(context, node)):
            return self._fold_elementwise(context, node, scope)
        return False

    def _fold_bn(self, context: FoldContext, bn: ir.Node, state: BnState) -> bool:
        folded, state.reason = _try_moves(context, AffineNode(bn, 0, state.map))
        if folded is None:
            return False
        self.ledger.bn_folded(state, folded)
        return True

    def _fold_elementwise(self, context: FoldContext, node: ir.Node, scope: Scope) -> bool:
        refusal = self.options.refused.get(refusal_key(node.name or ""))
        if refusal is not None:
            self.ledger.left[node] = (scope, refusal)
            return False
        fused = context.runtime_fused.get(node)
        if fused is not None:
            self.ledger.kept_for_runtime[node] = (scope, fused)
            return False
        try:
            found = read_elementwise(node, context.resolver.value_of, context.types.rank, context.types.dim)
        except Skip as skip:
            self.ledger.left[node] = (scope, skip.reason)
            return False
        folded, reason = _try_moves(context, AffineNode(node, found.data_index, found.params, found.axis))
        if folded is None:
            self.ledger.left[node] = (scope, reason)
            return False
        self.ledger.elementwise_gone(
            node,
            scope,
            words.with_pattern(folded.into, folded.pattern),
            folded.into,
            folded.pattern,
            folded.sites,
            folded.sandwich,
        )
        self.ledger.supersede(folded.superseded, folded.sites[0])
        return True

    def _in_chain(self, context: FoldContext, node: ir.Node) -> bool:
        """Whether `node` sits in an unbranched run of affine nodes that contains a BN."""
        if node in self.ledger.chain:
            return True
        members, touches_bn = affine_run(context, node, self.ledger.bns)
        if touches_bn:
            self.ledger.chain.update(members)
        return touches_bn

    # --- reparameterize ----------------------------------------------------------------------------

    def _reparameterize(self) -> bool:
        """Merge Conv/BN/identity branches on one input that an Add/Sum/Sub tree sums into one Conv (reparam.py)."""
        merged = False
        for scope in self.scopes:
            for node in list(scope.graph):
                if node.graph is scope.graph and reparam.is_root(node):
                    for tree in reparam.find_trees(node, self.contexts[scope.graph].resolver.value_of):
                        merged |= self._merge(self.contexts[scope.graph], tree)
        return merged

    def _merge(self, context: FoldContext, tree: reparam.Tree) -> bool:
        try:
            merged = reparam.merge(context, tree, self._pending_params, self.options.bn_only)
        except Skip as skip:
            logger.info("%s keeps its branches: %s", describe(tree.root), skip.reason)
            for leaf in tree.leaves:
                producer = leaf.producer()
                state = self.ledger.bns.get(producer) if producer is not None else None
                if state is not None and state.pending:
                    state.reason = words.branch_cannot_merge(state.reason, skip.reason)
            return False
        if merged is None:
            return False
        target = describe(merged.target)
        self.ledger.merged(merged.removed, merged.output, target)
        for bn in merged.bns:
            state = self.ledger.bns[bn]
            self.ledger.bn_folded(state, Folded(words.identity_branch(target), "reparameterized", (merged.output,)))
        return True

    def _pending_params(self, bn: ir.Node) -> AffineParams | None:
        state = self.ledger.bns.get(bn)
        if state is None or not state.pending or state.map.per_element:
            return None
        return state.map

    # --- convert -----------------------------------------------------------------------------------

    def _convert_leftovers(self) -> None:
        for bn, state in self.ledger.bns.items():
            if not state.pending:
                continue
            self.ledger.settle()
            context = self.contexts[state.scope.graph]
            if self.options.standalone == "bn":
                # whole, not its scale into the next Conv and an Add in its place: the same node count, and at
                # ORT_ENABLE_ALL onnxruntime runs a BN inside its NCHWc layout but reorders around an Add
                state.final = self.ledger.kept(state)
                continue
            if self._scale_forward(context, bn, state):
                continue
            try:
                mul, add = standalone.rewrite_as_mul_add(context, bn, state.map)
            except Skip as skip:
                state.final = self.ledger.kept(state, words.cannot_rewrite_as_mul_add(state.reason, skip.reason))
                continue
            self.ledger.created(state, mul, add)
            state.sites = [add.outputs[0]]

    def _scale_forward(self, context: FoldContext, bn: ir.Node, state: BnState) -> bool:
        """Fold the scale forward into consumers that take no shift (a Conv padding with zeros); the BN becomes Add."""
        params = state.map
        if params.per_element or not params.has_shift or np.any(params.scale == 0):
            return False
        try:
            scale = AffineNode(bn, 0, AffineParams(params.scale, 0 * params.shift))
            commit, into, consumers = prepare_forward(context, scale)
            add = standalone.rewrite_as_shift(context, bn, params)
        except Skip:
            return False
        commit()
        self.ledger.created(state, add)
        state.elsewhere["Mul"] = words.forward(into)
        state.sites = list(consumers)  # not the Add's output: without the scale it is not the BN's output
        return True


def _try_moves(context: FoldContext, affine: AffineNode) -> tuple[Folded | None, str]:
    """The first move that takes `affine`; else None and why none did."""
    reasons = []
    for move in MOVES:
        try:
            return move(context, affine), ""
        except Skip as skip:
            reasons.append(skip.reason)
    return None, "; ".join(reasons)


def batch_norms(model: ir.Model):
    """(node, scope) for every BatchNormalization, in the order the report lists them."""
    for scope in _scopes(model):
        for node in scope.graph:
            if node.op_type == "BatchNormalization" and in_default_domain(node):
                yield node, scope


def _scopes(model: ir.Model):
    """A scope for the main graph, its subgraphs (If/Loop/Scan bodies), and every function body."""
    opsets = dict(model.opset_imports)
    for graph, function in ir_graphs(model):
        if function is None:
            label = words.main_scope() if graph is model.graph else words.subgraph_scope(graph.name)
            yield Scope(graph, label, opsets, False)
            continue
        label = words.function_scope(function.domain, function.name, graph.name, graph is not function.graph)
        yield Scope(graph, label, dict(function.opset_imports) or opsets, True)
