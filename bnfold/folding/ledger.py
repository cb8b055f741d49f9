"""What the pass did to each node, and which values its folds changed: the records and the check's sites.

Every BN gets one record: folded (into what, by which pattern), kept (one BN, with
what it absorbed), converted (into what and why), or skipped (left exactly as it
was), always with the reason. Each Mul/Add/Sub/Div that folded gets one too, and a
chain member that stayed, its reason. The values a fold changed become the check's
sites; a value a later fold replaced is followed to where its computation shows now.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

import onnx_ir as ir

from bnfold import words
from bnfold.folding.affine import AffineParams
from bnfold.folding.moves import Folded
from bnfold.folding.sites import SiteLocator
from bnfold.report import NodeRecord, Site

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Scope:
    graph: ir.Graph
    label: str  # shown in the report: "main", "subgraph body", "function local::ConvBn"
    opsets: dict
    in_function: bool


@dataclasses.dataclass
class BnState:
    name: str
    scope: Scope
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

    @property
    def map(self) -> AffineParams:
        """Its affine map: set when it was screened, so every BN still pending has one."""
        if self.params is None:
            raise AssertionError(f"BatchNormalization {self.name} was not screened")
        return self.params


@dataclasses.dataclass(frozen=True)
class _Changed:
    """A Mul/Add/Sub/Div that folded: its record, the values it changed, its scope, its Cast sandwich key."""

    record: NodeRecord
    values: list[ir.Value]
    scope: Scope
    sandwich: str | None = None


class Ledger:
    """The records of one run of the pass, kept as the folds happen."""

    def __init__(self, bns: dict[ir.Node, BnState], progress: Callable[[str, int, int], None] | None = None) -> None:
        self.bns = bns
        self.progress = progress
        self.settled = 0  # BNs folded or given up, for progress
        self.changed: list[_Changed] = []  # Mul/Add/Sub/Div that folded
        self.chain: set[ir.Node] = set()  # elementwise nodes that belong to a BN's chain
        self.created_by: dict[ir.Node, BnState] = {}  # a conversion's Mul/Add -> its BN
        self.superseded: dict[ir.Value, ir.Value] = {}  # a value a later fold changed -> where that shows
        self.left: dict[ir.Node, tuple[Scope, str]] = {}  # elementwise nodes that did not fold, with the reason
        self.kept_for_runtime: dict[ir.Node, tuple[Scope, str]] = {}  # left for a fusion of onnxruntime's
        self.folded_at: dict[ir.Value, list[BnState]] = {}  # a value a BN's fold changed -> those BNs

    # --- as the folds happen ----------------------------------------------------------------------

    def settle(self) -> None:
        self.settled += 1
        if self.progress is not None:
            self.progress("folding", self.settled, len(self.bns))

    def bn_folded(self, state: BnState, folded: Folded) -> None:
        state.final = record(state.name, "folded", folded.into, None, state.scope, pattern=folded.pattern)
        state.sites = list(folded.sites)
        state.sandwich = folded.sandwich
        for value in folded.sites:
            self.folded_at.setdefault(value, []).append(state)
        self.supersede(folded.superseded, folded.sites[0])
        self.settle()

    def bn_given_up(self, state: BnState, reason: str) -> None:
        state.final = record(state.name, "skipped", reason=reason, scope=state.scope)
        self.settle()

    def supersede(self, values: Iterable[ir.Value], now: ir.Value) -> None:
        for value in values:
            self.superseded[value] = now

    def elementwise_gone(
        self,
        node: ir.Node,
        scope: Scope,
        where: str,
        into: str,
        pattern: str,
        sites: Iterable[ir.Value],
        sandwich: str | None = None,
    ) -> None:
        """Record a Mul/Add/Sub/Div of a chain (or of a BN's conversion) that folded away, changing `sites`."""
        self.left.pop(node, None)
        owner = self.created_by.get(node)
        if owner is not None:
            owner.elsewhere[node.op_type] = where
            owner.sites.extend(sites)
            return
        folded = record(words.record_name(node), "folded", into, None, scope, pattern=pattern, op=node.op_type)
        self.changed.append(_Changed(folded, list(sites), scope, sandwich))

    def created(self, state: BnState, *nodes: ir.Node) -> None:
        for node in nodes:
            state.created[node.op_type] = node
            self.chain.add(node)
            self.created_by[node] = state

    def absorbed(self, node: ir.Node, into: BnState, site: ir.Value) -> None:
        """`node` (another BN, or a Mul/Add/Sub/Div) became part of the BN of `into`."""
        target = words.batch_norm(into.name)
        state = self.bns.get(node)
        if state is None:
            self.elementwise_gone(node, into.scope, target, target, "collapsed", [site])
            return
        state.final = record(state.name, "folded", target, state.reason, state.scope, pattern="collapsed")
        state.sites = [site]
        self.settle()

    def merged(self, removed: Iterable[ir.Value], output: ir.Value, target: str) -> None:
        """Reparameterization: `removed` values are gone into `output`; the BNs folded there say so."""
        for value in removed:
            self.superseded[value] = output
            for state in self.folded_at.get(value, []):
                if state.final is not None:
                    state.final = dataclasses.replace(state.final, into=words.merged_into(state.final.into, target))

    def kept(self, state: BnState, reason: str | None = None) -> NodeRecord:
        """The record of a BN that stays one: why (its own reason unless `reason` says more)."""
        return record(
            state.name,
            "kept",
            words.kept_batch_norm(state.absorbed),
            reason or state.reason,
            state.scope,
            pattern="collapsed" if state.absorbed else None,
        )

    # --- at the end -------------------------------------------------------------------------------

    def records(self, model: ir.Model, still_in_chain: Callable[[Scope, ir.Node], bool]):
        """(records, sites, sandwiches): BNs in graph order, then the Mul/Add/Sub/Div that folded, then chain
        members left with their reason; every main-graph value a fold changed, with the nodes whose folds changed
        it; and the site names that show each Cast sandwich fold (site name -> keys)."""
        locate = SiteLocator(model)
        records: list[NodeRecord] = []
        claims: list[tuple[Site, str, bool]] = []
        sandwiches: dict[str, list[str]] = {}
        changed = [
            _Changed(self._bn_record(state), state.sites, state.scope, state.sandwich) for state in self.bns.values()
        ]
        for item in [*changed, *self.changed]:
            found = locate(self.current(item.values), item.scope.graph, None)
            records.append(dataclasses.replace(item.record, site=found[0].name) if found else item.record)
            own = item.record.pattern not in ("forward", "scale-forward")  # its own output, not a consumer's
            claims += [(site, item.record.name, own) for site in found]
            if item.sandwich is not None:
                for site in found:
                    sandwiches.setdefault(site.name, []).append(item.sandwich)
        records += [
            record(words.record_name(node), "skipped", reason=reason, scope=scope, op=node.op_type)
            for node, (scope, reason) in self.left.items()
            if node.graph is not None and node not in self.created_by and still_in_chain(scope, node)
        ]
        records += [
            record(words.record_name(node), "kept", node.op_type, reason, scope, op=node.op_type)
            for node, (scope, reason) in self.kept_for_runtime.items()
        ]
        return records, _attributed(claims), sandwiches

    def current(self, values: Iterable[ir.Value]) -> list[ir.Value]:
        """`values`, each replaced by where its computation shows now that later folds changed it."""
        found = []
        for value in values:
            seen = set()
            while value in self.superseded and value not in seen:
                seen.add(value)
                value = self.superseded[value]
            found.append(value)
        return list(dict.fromkeys(found))

    def _bn_record(self, state: BnState) -> NodeRecord:
        if state.final is not None:
            return state.final
        pattern = "mul-add" if "Mul" in state.created else "scale-forward"
        remaining = [op for op in state.created if op not in state.elsewhere]
        if not remaining:  # everything it became folded away too
            into = words.all_folded_elsewhere(state.elsewhere)
            return record(state.name, "folded", into, state.reason, state.scope, pattern=pattern)
        return record(
            state.name,
            "converted",
            words.converted(remaining, state.elsewhere),
            state.reason,
            state.scope,
            pattern=pattern,
        )


def _attributed(claims: list[tuple[Site, str, bool]]) -> list[Site]:
    """One Site per value, naming every node whose fold changed it: those whose own output it is first."""
    names: dict[str, list[str]] = {}
    first: dict[str, Site] = {}
    for site, name, _ in sorted(claims, key=lambda claim: not claim[2]):
        first.setdefault(site.name, site)
        if name not in names.setdefault(site.name, []):
            names[site.name].append(name)
    order = list(dict.fromkeys(site.name for site, _, _ in claims))
    return [dataclasses.replace(first[n], bn=", ".join(names[n]), nodes=tuple(names[n])) for n in order]


def record(
    name: str,
    action,
    into: str | None = None,
    reason: str | None = None,
    scope: Scope | None = None,
    pattern: str | None = None,
    op: str = "BatchNormalization",
) -> NodeRecord:
    logger.info("%s %s: %s %s", op, name, action, into or reason)
    return NodeRecord(
        name=name,
        action=action,
        into=into,
        reason=reason,
        graph=scope.label if scope else "main",
        pattern=pattern,
        op=op,
    )
