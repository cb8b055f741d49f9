"""Reading a node: its attributes with defaults, its domain, its opset."""

from __future__ import annotations

import onnx_ir as ir


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.value)


def float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else float(attr.value)


def str_attr(node: ir.Node, name: str, default: str) -> str:
    attr = node.attributes.get(name)
    if attr is None:
        return default
    value = attr.value
    return value.decode() if isinstance(value, bytes) else str(value)


def in_default_domain(node: ir.Node) -> bool:
    """The node is a standard ONNX operator (domain "" or its alias "ai.onnx")."""
    return node.domain in ("", "ai.onnx")


def opset_of(node: ir.Node, graph_opsets: dict[str, int]) -> int:
    if node.version is not None:
        return node.version
    return graph_opsets.get(node.domain or "", graph_opsets.get("ai.onnx", 1))
