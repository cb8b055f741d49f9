"""Transformer blocks the way torch.onnx.export (TorchScript, opset 17) emits them.

`nn.TransformerEncoderLayer(E, H, F, activation="gelu", batch_first=True)` in eval mode:
the batch-first input is transposed to [L, B, E]; the packed input projection is a
MatMul + bias Add whose output is split into q, k and v by Reshape → Unsqueeze →
Transpose → Squeeze → Gather; heads by Reshape [L, B·H, d] → Transpose; q and k are
each scaled by Mul(√(1/√d)) before the score MatMul; the output projection is a Gemm
on [L·B, E]; LayerNorm and GELU are written out as ops. The exporter deduplicates
equal initializers: every layer's all-zero in-projection bias is one tensor, which
later layers read through Identity.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper


class Graph:
    """Nodes and initializers with unique names, built in order."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list = []
        self.initializers: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def const(self, name: str, array) -> str:
        self.initializers[name] = np.asarray(array)
        return name

    def op(self, op_type: str, inputs, **attrs) -> str:
        self.count += 1
        out = f"/{op_type}_{self.count}_output_0"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"/{op_type}_{self.count}", **attrs))
        return out

    def weight(self, name: str, shape, scale: float) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def model(self, inputs, outputs, opset: int = 17):
        graph = helper.make_graph(
            self.nodes,
            "exported",
            inputs,
            outputs,
            [numpy_helper.from_array(a, n) for n, a in self.initializers.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return model


def layer_norm(g: Graph, x: str, prefix: str, width: int, eps: float = 1e-5) -> str:
    """LayerNorm over the last axis, as ops: (x − mean) / sqrt(var + ε) · γ + β."""
    mean = g.op("ReduceMean", [x], axes=[-1])
    centred = g.op("Sub", [x, mean])
    square = g.op("Pow", [centred, g.const(f"{prefix}.two", np.array(2.0, np.float32))])
    variance = g.op("ReduceMean", [square], axes=[-1])
    shifted = g.op("Add", [variance, g.const(f"{prefix}.eps", np.array(eps, np.float32))])
    normed = g.op("Div", [centred, g.op("Sqrt", [shifted])])
    gamma = g.const(f"{prefix}.weight", g.rng.uniform(0.5, 1.5, width).astype(np.float32))
    beta = g.const(f"{prefix}.bias", g.rng.normal(0, 0.1, width).astype(np.float32))
    return g.op("Add", [g.op("Mul", [normed, gamma]), beta])


def gelu(g: Graph, x: str, prefix: str) -> str:
    """GELU, erf form: x · 0.5 · (1 + erf(x / √2))."""
    scaled = g.op("Div", [x, g.const(f"{prefix}.sqrt2", np.array(np.sqrt(2.0), np.float32))])
    erf = g.op("Erf", [scaled])
    shifted = g.op("Add", [erf, g.const(f"{prefix}.one", np.array(1.0, np.float32))])
    return g.op("Mul", [g.op("Mul", [x, shifted]), g.const(f"{prefix}.half", np.array(0.5, np.float32))])


def linear(g: Graph, x: str, name: str, fan_in: int, fan_out: int, bias: str | None = None) -> str:
    """nn.Linear on a rank-3 input: MatMul by the transposed weight, then the bias Add."""
    weight = g.weight(f"{name}.weight_T", (fan_in, fan_out), 1 / np.sqrt(fan_in))
    bias = bias or g.const(f"{name}.bias", g.rng.normal(0, 0.1, fan_out).astype(np.float32))
    return g.op("Add", [bias, g.op("MatMul", [x, weight])])


def attention(g: Graph, x: str, prefix: str, seq: int, batch: int, width: int, heads: int, in_bias: str) -> str:
    """Multi-head self-attention on x [L, B, E] (torch's _in_projection_packed and SDPA)."""
    head = width // heads
    proj = linear(g, x, f"{prefix}.in_proj", width, 3 * width, bias=in_bias)
    split = g.op("Reshape", [proj, g.const(f"{prefix}.unflatten", np.array([seq, batch, 3, width], np.int64))])
    split = g.op("Unsqueeze", [split, g.const(f"{prefix}.zero", np.array([0], np.int64))])
    split = g.op("Transpose", [split], perm=[3, 1, 2, 0, 4])
    split = g.op("Squeeze", [split, g.const(f"{prefix}.minus2", np.array([-2], np.int64))])
    per_head = g.const(f"{prefix}.heads", np.array([seq, batch * heads, head], np.int64))
    q, k, v = (
        g.op(
            "Transpose",
            [g.op("Reshape", [g.op("Gather", [split, g.const(f"{prefix}.i{i}", np.array(i))], axis=0), per_head])],
            perm=[1, 0, 2],
        )
        for i in range(3)
    )
    root = g.const(f"{prefix}.sqrt_scale", np.array(np.sqrt(1 / np.sqrt(head)), np.float32))
    q = g.op("Mul", [q, root])
    k = g.op("Mul", [g.op("Transpose", [k], perm=[0, 2, 1]), root])
    scores = g.op("Softmax", [g.op("MatMul", [q, k])], axis=-1)
    mixed = g.op("Transpose", [g.op("MatMul", [scores, v])], perm=[1, 0, 2])
    flat = g.op("Reshape", [mixed, g.const(f"{prefix}.flat", np.array([seq * batch, width], np.int64))])
    out_w = g.weight(f"{prefix}.out_proj.weight", (width, width), 1 / np.sqrt(width))
    out_b = g.const(f"{prefix}.out_proj.bias", g.rng.normal(0, 0.1, width).astype(np.float32))
    out = g.op("Gemm", [flat, out_w, out_b], transB=1)
    return g.op("Reshape", [out, g.const(f"{prefix}.back", np.array([seq, batch, width], np.int64))])


def transformer_encoder(
    layers: int = 2,
    seq: int = 6,
    batch: int = 2,
    width: int = 32,
    heads: int = 4,
    ffn: int = 64,
    seed: int = 0,
    in_bias: str = "zero",
    scaled_ffn: bool = False,
):
    """Linear → TransformerEncoder(layers × TransformerEncoderLayer, GELU, batch_first) → Linear.

    `in_bias`: "zero" (torch's default: one deduplicated all-zero tensor, read through Identity by
    later layers) or "random" (one shared random bias, also through Identity). `scaled_ffn`: a
    per-feature Mul after each FFN output projection (a layer-scale γ, foldable into it).
    """
    g = Graph(seed)
    x = linear(g, "x", "embed", 8, width)
    values = np.zeros(3 * width) if in_bias == "zero" else g.rng.normal(0, 0.2, 3 * width)
    zero_bias = g.const("layers.0.self_attn.in_proj_bias", values.astype(np.float32))
    x = g.op("Transpose", [x], perm=[1, 0, 2])
    for index in range(layers):
        prefix = f"layers.{index}"
        bias = zero_bias if index == 0 else g.op("Identity", [zero_bias])
        x = layer_norm(
            g,
            g.op("Add", [x, attention(g, x, f"{prefix}.self_attn", seq, batch, width, heads, bias)]),
            f"{prefix}.norm1",
            width,
        )
        hidden = gelu(g, linear(g, x, f"{prefix}.linear1", width, ffn), f"{prefix}.gelu")
        out = linear(g, hidden, f"{prefix}.linear2", ffn, width)
        if scaled_ffn:
            out = g.op("Mul", [out, g.const(f"{prefix}.gamma", g.rng.uniform(0.5, 1.5, width).astype(np.float32))])
        x = layer_norm(g, g.op("Add", [x, out]), f"{prefix}.norm2", width)
    x = g.op("Transpose", [x], perm=[1, 0, 2])
    y = linear(g, x, "head", width, 4)
    return g.model(
        [helper.make_tensor_value_info("x", 1, [batch, seq, 8])],
        [helper.make_tensor_value_info(y, 1, [batch, seq, 4])],
    )
