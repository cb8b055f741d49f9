"""Models with the patterns onnxruntime fuses, for the inference benchmark (issue 20): GELU, LayerNorm and
attention written out as ops the way torch.onnx.export (TorchScript, opset 17) writes them, with BNs where the
architectures have them. Built with onnx.helper (no torch); random weights.

    transformer   Linear → 4 × torch TransformerEncoderLayer(128, 4 heads, 512, GELU) → Linear, 64 tokens
    convnext      ConvNeXt/MaxViT-style stage: 3 × (dw Conv 7×7 → LayerNorm → Linear → GELU → Linear → γ) at 56×56
    svtr_head     SVTR-style text recognizer head: Conv+BN+GELU ×2, then 2 × (attention, LayerNorm, GELU MLP)
    conv_gelu_bn  Conv → GELU → BN → Conv → HardSwish → BN → Conv, at 64×64
"""

from __future__ import annotations

import numpy as np
from bench_models import Net
from onnx import numpy_helper

F32 = np.float32


def _shape(net: Net, dims: list[int]) -> str:
    name = net.name("shape")
    net.inits.append(numpy_helper.from_array(np.array(dims, np.int64), name))
    return name


def _scalar(net: Net, value: float) -> str:
    return net.const(net.name("c"), np.array(value, F32))


def gelu(net: Net, x: str) -> str:
    """x · 0.5 · (1 + erf(x / √2)): Div, Erf, Add, Mul, Mul."""
    erf = net.op("Erf", [net.op("Div", [x, _scalar(net, np.sqrt(2.0))])])
    return net.op("Mul", [net.op("Mul", [x, net.op("Add", [erf, _scalar(net, 1.0)])]), _scalar(net, 0.5)])


def layer_norm(net: Net, x: str, width: int) -> str:
    """Over the last axis, as ops, with γ and β."""
    centred = net.op("Sub", [x, net.op("ReduceMean", [x], axes=[-1])])
    variance = net.op("ReduceMean", [net.op("Pow", [centred, _scalar(net, 2.0)])], axes=[-1])
    normed = net.op("Div", [centred, net.op("Sqrt", [net.op("Add", [variance, _scalar(net, 1e-5)])])])
    gamma = net.const(net.name("ln.weight"), net.rng.uniform(0.5, 1.5, width))
    return net.op(
        "Add", [net.op("Mul", [normed, gamma]), net.const(net.name("ln.bias"), net.rng.normal(0, 0.1, width))]
    )


def dense(net: Net, x: str, fin: int, fout: int) -> str:
    """nn.Linear on tokens: MatMul by the transposed weight, then the bias Add."""
    weight = net.const(net.name("fc.weight_T"), net.rng.standard_normal((fin, fout)) / np.sqrt(fin))
    return net.op("Add", [net.op("MatMul", [x, weight]), net.const(net.name("fc.bias"), net.rng.normal(0, 0.1, fout))])


def attention(net: Net, x: str, tokens: int, width: int, heads: int) -> str:
    """Self-attention on [1, T, C]: q, k, v Linears, heads by Reshape/Transpose, scores / √d, Softmax."""
    head = width // heads
    split = _shape(net, [1, tokens, heads, head])
    q, k, v = (
        net.op("Transpose", [net.op("Reshape", [dense(net, x, width, width), split])], perm=[0, 2, 1, 3]) for _ in "qkv"
    )
    scores = net.op("MatMul", [q, net.op("Transpose", [k], perm=[0, 1, 3, 2])])
    weights = net.op("Softmax", [net.op("Div", [scores, _scalar(net, np.sqrt(head))])], axis=-1)
    merged = net.op("Transpose", [net.op("MatMul", [weights, v])], perm=[0, 2, 1, 3])
    flat = net.op("Reshape", [merged, _shape(net, [1, tokens, width])])
    return dense(net, flat, width, width)


def _encoder_layer(net: Net, x: str, tokens: int, width: int, heads: int, ffn: int) -> str:
    x = layer_norm(net, net.op("Add", [x, attention(net, x, tokens, width, heads)]), width)
    return layer_norm(net, net.op("Add", [x, dense(net, gelu(net, dense(net, x, width, ffn)), ffn, width)]), width)


def transformer(tokens: int = 64, width: int = 128, heads: int = 4, ffn: int = 512, layers: int = 4):
    net = Net(11)
    x = dense(net, "input", 32, width)
    for _ in range(layers):
        x = _encoder_layer(net, x, tokens, width, heads, ffn)
    return net.model([1, tokens, 32], dense(net, x, width, 10), [1, tokens, 10], "transformer")


def convnext(size: int = 56, width: int = 96, blocks: int = 3):
    net = Net(12)
    x = net.conv("input", 3, width, 3, bias=True)
    for _ in range(blocks):
        name = net.name("dw")
        weight = net.const(f"{name}.weight", net.rng.standard_normal((width, 1, 7, 7)) / 7)
        mixed = net.op(
            "Conv", [x, weight, net.const(f"{name}.bias", net.rng.normal(0, 0.1, width))], group=width, pads=[3] * 4
        )
        tokens = layer_norm(net, net.op("Transpose", [mixed], perm=[0, 2, 3, 1]), width)
        hidden = dense(net, gelu(net, dense(net, tokens, width, 4 * width)), 4 * width, width)
        scaled = net.op("Mul", [hidden, net.const(net.name("gamma"), net.rng.uniform(0.5, 1.5, width))])
        x = net.op("Add", [x, net.op("Transpose", [scaled], perm=[0, 3, 1, 2])])
    return net.model([1, 3, size, size], x, [1, width, size, size], "convnext")


def svtr_head(height: int = 8, width: int = 64, channels: int = 64, blocks: int = 2):
    net = Net(13)
    x = gelu(net, net.bn(net.conv("input", 32, channels, 3), channels))
    x = gelu(net, net.bn(net.conv(x, channels, channels, 1), channels))
    tokens = height * width
    x = net.op(
        "Transpose",
        [net.op("Reshape", [x, _shape(net, [1, channels, tokens])])],
        perm=[0, 2, 1],
    )
    for _ in range(blocks):
        x = _encoder_layer(net, x, tokens, channels, 4, 2 * channels)
    return net.model([1, 32, height, width], dense(net, x, channels, 97), [1, tokens, 97], "svtr_head")


def conv_gelu_bn(size: int = 64):
    net = Net(14)
    x = net.bn(gelu(net, net.conv("input", 3, 32, 3, bias=True)), 32)
    x = net.bn(net.op("HardSwish", [net.conv(x, 32, 64, 3, bias=True)]), 64)
    return net.model([1, 3, size, size], net.conv(x, 64, 16, 1, bias=True), [1, 16, size, size], "conv_gelu_bn")


BUILDERS = {"transformer": transformer, "convnext": convnext, "svtr_head": svtr_head, "conv_gelu_bn": conv_gelu_bn}
