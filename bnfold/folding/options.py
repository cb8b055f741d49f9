"""The options of one run of the pass (light: no onnx-ir, so the CLI can decide before loading a model)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bnfold.errors import InputError

STANDALONE_FORMS = ("bn", "mul-add")


@dataclass(frozen=True)
class PassOptions:
    standalone: str = "bn"  # what a BN with nothing to fold into becomes: "bn" or "mul-add"
    bn_only: bool = False  # fold only BNs and the per-channel nodes of their chains
    # folds a check refused, key -> reason: a Cast sandwich's key, or refusal_key(node name)
    refused: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The one place --standalone / standalone= is judged: every way into the pass builds PassOptions.
        if self.standalone not in STANDALONE_FORMS:
            raise InputError(f"standalone must be one of {', '.join(STANDALONE_FORMS)}, not '{self.standalone}'")


_NODE = "node:"


def refusal_key(node_name: str) -> str:
    """The `refused` key of a node whose fold failed the check."""
    return _NODE + node_name


def refused_nodes(refused: Iterable[str]) -> list[str]:
    """The node names among `refused` keys (the rest are Cast sandwiches)."""
    return [key[len(_NODE) :] for key in refused if key.startswith(_NODE)]


def sandwiches_refused(refused: Iterable[str]) -> bool:
    """Whether a check already refused Cast sandwich folds (they are judged once, then commit or fail)."""
    return any(not key.startswith(_NODE) for key in refused)
