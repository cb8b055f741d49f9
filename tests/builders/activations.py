"""Activation and normalization patterns written out as ops, the way exporters emit them, between linear layers.

Each `*_block` takes a Graph (builders.transformer) and a value, and returns the pattern's output.
`pattern_net(name)` puts one pattern between two linear layers, so that bnfold has a neighbouring linear
layer to fold the pattern's constants into and onnxruntime has the pattern to fuse.
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
NORMS = ("layer_norm", "rms_norm")


def conv1x1(g: Graph, x: str, name: str, cin: int, cout: int) -> str:
    weight = g.weight(f"{name}.weight", (cout, cin, 1, 1), 1 / np.sqrt(cin))
    return g.op("Conv", [x, weight, g.const(f"{name}.bias", g.rng.normal(0, 0.1, cout).astype(F32))])


def pattern_net(name: str, width: int = 16, seed: int = 0):
    """One pattern between two linear layers, each pattern where exporters put it: an activation between 1×1
    Convs (ConvMlp, MBConv: [N, C, H, W], channel axis 1, a map folds forward into the next Conv), a norm over
    the features of a rank-2 Linear ([N, C]), attention on tokens ([B, T, C])."""
    g = Graph(seed)
    if name in NORMS:
        x = g.op("Gemm", ["x", g.weight("fc1.weight", (8, width), 0.3), g.const("fc1.bias", np.zeros(width, F32))])
        y = g.op("Gemm", [PATTERNS[name](g, x, width), g.weight("fc2.weight", (width, 4), 0.3)])
        shapes = ([2, 8], [2, 4])
    elif name == "attention":
        y = linear(g, PATTERNS[name](g, linear(g, "x", "fc1", 8, width), width), "fc2", width, 4)
        shapes = ([2, 5, 8], [2, 5, 4])
    else:
        y = conv1x1(g, PATTERNS[name](g, conv1x1(g, "x", "fc1", 8, width), width), "fc2", width, 4)
        shapes = ([1, 8, 4, 4], [1, 4, 4, 4])
    return g.model(
        [helper.make_tensor_value_info("x", 1, shapes[0])],
        [helper.make_tensor_value_info(y, 1, shapes[1])],
    )


def conv_gelu_bn_net(seed: int = 0):
    """torch's Conv → GELU → BN → Conv(3×3, zero padding) → Hardswish → BN → Conv(1×1), GELU written out."""
    g = Graph(seed)

    def conv(x: str, name: str, cin: int, cout: int, kernel: int) -> str:
        weight = g.weight(f"{name}.weight", (cout, cin, kernel, kernel), 1 / np.sqrt(cin * kernel * kernel))
        bias = g.const(f"{name}.bias", g.rng.normal(0, 0.1, cout).astype(F32))
        return g.op("Conv", [x, weight, bias], pads=[kernel // 2] * 4)

    def bn(x: str, name: str, channels: int) -> str:
        params = [
            g.const(f"{name}.{part}", values.astype(F32))
            for part, values in (
                ("weight", g.rng.uniform(0.5, 1.5, channels)),
                ("bias", g.rng.normal(0, 0.2, channels)),
                ("running_mean", g.rng.normal(0, 0.2, channels)),
                ("running_var", g.rng.uniform(0.5, 2.0, channels)),
            )
        ]
        return g.op("BatchNormalization", [x, *params])

    x = bn(gelu(g, conv("x", "c1", 3, 8, 3), "g"), "b1", 8)
    x = bn(g.op("HardSwish", [conv(x, "c2", 8, 16, 3)]), "b2", 16)
    y = conv(x, "c3", 16, 4, 1)
    return g.model(
        [helper.make_tensor_value_info("x", 1, [1, 3, 12, 12])],
        [helper.make_tensor_value_info(y, 1, [1, 4, 12, 12])],
    )
