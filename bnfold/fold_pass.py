"""The BatchNormalization folding pass over an onnx-ir model.

For every BatchNormalization, in topological order, in the main graph, every
subgraph (If/Loop/Scan bodies) and every model-local function body (folded in
place, never inlined):

1. A BN that does not compute its frozen inference map (training mode, optional
   outputs in use) is left exactly as it is.
2. Its parameters must be constants; (s, t) is computed once in float64.
3. If its input comes from a Conv, ConvTranspose, Gemm or MatMul whose output
   feeds only the BN, the matching rule folds (s, t) into that node's weights.
4. Otherwise (or when the rule refuses) the BN is rewritten as Mul + Add, unless
   the caller keeps standalone BNs.

Every BN gets one record: folded, converted, or skipped with the reason. Because
nodes are visited in topological order and a fold leaves the producer in place,
a chain Conv → BN → BN folds completely in one sweep.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir

from bnfold.batchnorm import BnParams, Skip, read_params, training_reason
from bnfold.graph import ConstantResolver, NameAuthority, TypeHints, opset_of, retire_node
from bnfold.report import BnRecord
from bnfold.rules import PRODUCER_RULES, standalone
from bnfold.rules.base import QUANTIZATION_OPS, FoldContext, describe

logger = logging.getLogger(__name__)

PRODUCERS = "Conv, ConvTranspose, Gemm or MatMul"
# Integer-arithmetic producers: their weights are quantized, nothing folds into them.
QUANTIZED_PRODUCERS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm"})


class BatchNormFoldPass(ir.passes.InPlacePass):
    """Folds BatchNormalization nodes; `records` describes what happened to each."""

    def __init__(self, keep_standalone: bool = False) -> None:
        super().__init__()
        self.keep_standalone = keep_standalone
        self.records: list[BnRecord] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        scopes = list(_scopes(model))
        shared = FoldContext(ConstantResolver(model), NameAuthority(model), TypeHints(model), opset=1,
                             function_graphs=frozenset(s.graph for s in scopes if s.in_function))
        self.records = []
        for scope in scopes:
            context = dataclasses.replace(shared, opset=scope.opsets.get("", 1))
            for node in list(scope.graph):
                if node.graph is scope.graph and _is_batch_norm(node):
                    opset = opset_of(node, scope.opsets)
                    self.records.append(self._handle(context, node, opset, scope.label))
        modified = any(record.action != "skipped" for record in self.records)
        return ir.passes.PassResult(model, modified)

    def _handle(self, context: FoldContext, bn: ir.Node, opset: int, scope: str) -> BnRecord:
        name = bn.name or "(unnamed BatchNormalization)"
        reason = training_reason(bn, opset)
        if reason is not None:
            return _record(name, "skipped", None, reason, scope)
        try:
            params = read_params(bn, opset, context.resolver, context.hints)
        except Skip as skip:
            return _record(name, "skipped", None, skip.reason, scope)
        try:
            into = fold_into_producer(context, bn, params)
            return _record(name, "folded", into, None, scope)
        except Skip as skip:
            not_folded = skip.reason
        if self.keep_standalone:
            return _record(name, "skipped", None, f"{not_folded}; kept as BN (keep_standalone)", scope)
        try:
            standalone.rewrite(context, bn, params)
        except Skip as skip:
            return _record(name, "skipped", None, f"{not_folded}; cannot rewrite: {skip.reason}", scope)
        return _record(name, "converted", "Mul+Add", not_folded, scope)


def fold_into_producer(context: FoldContext, bn: ir.Node, params: BnParams) -> str:
    """Fold `bn` into the node that produces its input; Skip (nothing changed) if that is unsafe."""
    data = bn.inputs[0]
    producer = None if data is None else data.producer()
    if producer is not None and producer.op_type in QUANTIZATION_OPS | QUANTIZED_PRODUCERS:
        raise Skip(f"its input comes from {describe(producer)}, a quantized op; fold before quantizing")
    if producer is None or producer.domain not in ("", "ai.onnx") or producer.op_type not in PRODUCER_RULES:
        raise Skip(f"no {PRODUCERS} before it")
    if producer.graph is not bn.graph:
        raise Skip(f"{describe(producer)} is in an outer graph")
    if data.is_graph_output():
        raise Skip(f"output of {describe(producer)} is also a graph output")
    consumers = len(data.uses())
    if consumers > 1:
        raise Skip(f"output of {describe(producer)} has {consumers} consumers")
    if params.per_element:
        raise Skip("per-element statistics (spatial=0) cannot fold into a weight")
    target = describe(producer)  # before the rule runs: MatMul becomes Gemm
    PRODUCER_RULES[producer.op_type](context, producer, params)
    retire_node(bn, data)
    return target


def _record(name: str, action, into: str | None, reason: str | None, scope: str) -> BnRecord:
    if action == "folded":
        logger.info("%s: folded into %s", name, into)
    else:
        logger.info("%s: %s (%s)", name, action, reason)
    return BnRecord(name=name, action=action, into=into, reason=reason, graph=scope)


def _is_batch_norm(node: ir.Node) -> bool:
    return node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class _Scope:
    graph: ir.Graph
    label: str  # shown in the report: "main", "subgraph body", "function local::ConvBn"
    opsets: dict
    in_function: bool


def _scopes(model: ir.Model):
    """The main graph, its subgraphs (If/Loop/Scan bodies), and every function body with its subgraphs."""
    opsets = dict(model.opset_imports)
    yield _Scope(model.graph, "main", opsets, False)
    for subgraph in model.graph.subgraphs():
        yield _Scope(subgraph, f"subgraph {subgraph.name or '(unnamed)'}", opsets, False)
    for function in model.functions.values():
        function_opsets = dict(function.opset_imports) or opsets
        label = f"function {function.domain}::{function.name}"
        yield _Scope(function.graph, label, function_opsets, True)
        for subgraph in function.graph.subgraphs():
            yield _Scope(subgraph, f"{label} subgraph {subgraph.name or '(unnamed)'}", function_opsets, True)
