"""Activation and normalization patterns written out as ops, the way exporters emit them, between linear layers.

Each `*_block` takes a Graph (builders.transformer) and a value, and returns the pattern's output.
`pattern_net(name)` wraps one pattern as Linear → BN-like scale → pattern → Linear on a rank-3 input
([batch, tokens, width]), so that bnfold has a neighbouring linear layer to fold the pattern's constants
into and onnxruntime has the pattern to fuse.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from builders.transformer import Graph, gelu, layer_norm, linear

F32 = np.float32


def gelu_half_first(g: Graph, x: str, prefix: str) -> str:
    """GELU, erf form, with the ½ on x first: (x · 0.5) · (1 + erf(x / √2)) (ORT's GeluFusion, pattern 1)."""
    scaled = g.op("Div", [x, g.const(f"{prefix}.sqrt2", np.array(np.sqrt(2.0), F32))])
    shifted = g.op("Add", [g.op("Erf", [scaled]), g.const(f"{prefix}.one", np.array(1.0, F32))])
    half = g.op("Mul", [x, g.const(f"{prefix}.half", np.array(0.5, F32))])
    return g.op("Mul", [half, shifted])


def gelu_tanh(g: Graph, x: str, prefix: str) -> str:
    """GELU, tanh form: 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))."""
    cube = g.op("Pow", [x, g.const(f"{prefix}.three", np.array(3.0, F32))])
    inner = g.op("Add", [x, g.op("Mul", [cube, g.const(f"{prefix}.c", np.array(0.044715, F32))])])
    scaled = g.op("Mul", [inner, g.const(f"{prefix}.k", np.array(np.sqrt(2 / np.pi), F32))])
    shifted = g.op("Add", [g.op("Tanh", [scaled]), g.const(f"{prefix}.one", np.array(1.0, F32))])
    return g.op("Mul", [g.op("Mul", [x, g.const(f"{prefix}.half", np.array(0.5, F32))]), shifted])


def quick_gelu(g: Graph, x: str, prefix: str, alpha: float = 1.702) -> str:
    """x · sigmoid(α·x) (CLIP's QuickGELU; Swish with β = α)."""
    gate = g.op("Sigmoid", [g.op("Mul", [x, g.const(f"{prefix}.alpha", np.array(alpha, F32))])])
    return g.op("Mul", [x, gate])


def hard_swish(g: Graph, x: str, prefix: str) -> str:
    """Paddle's hard-swish: x · relu6(x + 3) / 6."""
    shifted = g.op("Add", [x, g.const(f"{prefix}.three", np.array(3.0, F32))])
    clipped = g.op(
        "Clip", [shifted, g.const(f"{prefix}.lo", np.array(0.0, F32)), g.const(f"{prefix}.hi", np.array(6.0, F32))]
    )
    return g.op("Div", [g.op("Mul", [x, clipped]), g.const(f"{prefix}.six", np.array(6.0, F32))])


def rms_norm(g: Graph, x: str, prefix: str, width: int, eps: float = 1e-6) -> str:
    """RMSNorm over the last axis: x / sqrt(mean(x²) + ε) · γ."""
    square = g.op("Pow", [x, g.const(f"{prefix}.two", np.array(2.0, F32))])
    shifted = g.op("Add", [g.op("ReduceMean", [square], axes=[-1]), g.const(f"{prefix}.eps", np.array(eps, F32))])
    normed = g.op("Div", [x, g.op("Sqrt", [shifted])])
    return g.op("Mul", [normed, g.const(f"{prefix}.weight", g.rng.uniform(0.5, 1.5, width).astype(F32))])


def scaled_scores(g: Graph, x: str, prefix: str, width: int) -> str:
    """Single-head self-attention with separate q/k/v projections and the 1/√d scale after the score MatMul."""
    q, k, v = (linear(g, x, f"{prefix}.{n}", width, width) for n in "qkv")
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])])
    scaled = g.op("Div", [scores, g.const(f"{prefix}.sqrt_d", np.array(np.sqrt(width), F32))])
    return g.op("MatMul", [g.op("Softmax", [scaled], axis=-1), v])


PATTERNS = {
    "gelu": lambda g, x, w: gelu(g, x, "act"),
    "gelu_half_first": lambda g, x, w: gelu_half_first(g, x, "act"),
    "gelu_tanh": lambda g, x, w: gelu_tanh(g, x, "act"),
    "quick_gelu": lambda g, x, w: quick_gelu(g, x, "act"),
    "hard_swish": lambda g, x, w: hard_swish(g, x, "act"),
    "layer_norm": lambda g, x, w: layer_norm(g, x, "norm", w),
    "rms_norm": lambda g, x, w: rms_norm(g, x, "norm", w),
    "attention": lambda g, x, w: scaled_scores(g, x, "attn", w),
}


def pattern_net(name: str, width: int = 16, tokens: int = 5, batch: int = 2, seed: int = 0):
    """Linear → per-feature Mul (a folded-away BN's kind of neighbour) → pattern → Linear, on [B, T, width]."""
    g = Graph(seed)
    x = linear(g, "x", "fc1", 8, width)
    x = g.op("Mul", [x, g.const("scale", g.rng.uniform(0.5, 1.5, width).astype(F32))])
    x = PATTERNS[name](g, x, width)
    y = linear(g, x, "fc2", width, 4)
    return g.model(
        [helper.make_tensor_value_info("x", 1, [batch, tokens, 8])],
        [helper.make_tensor_value_info(y, 1, [batch, tokens, 4])],
    )
