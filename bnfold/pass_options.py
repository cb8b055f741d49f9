"""The options of one run of the pass (light: no onnx-ir, so the CLI can decide before loading a model)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bnfold.errors import InputError

STANDALONE_FORMS = ("bn", "mul-add")


def check_standalone(form: str) -> str:
    if form not in STANDALONE_FORMS:
        raise InputError(f"standalone must be one of {', '.join(STANDALONE_FORMS)}, not '{form}'")
    return form


@dataclass(frozen=True)
class PassOptions:
    standalone: str = "bn"  # what a BN with nothing to fold into becomes: "bn" or "mul-add"
    bn_only: bool = False  # fold only BNs and the per-channel nodes of their chains
    # folds a check refused, key -> reason: a Cast sandwich's key, or refusal_key(node name)
    refused: Mapping[str, str] = field(default_factory=dict)


def refusal_key(node_name: str) -> str:
    """The `refused` key of a node whose fold failed the check."""
    return f"node:{node_name}"
