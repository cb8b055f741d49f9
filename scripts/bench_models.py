"""Whole-net models for the inference benchmark, built with onnx.helper (no torch): the layouts of
torchvision's ResNet-18, a pre-activation ResNet, DenseNet-121 and a BN1d MLP, with random weights
(He-scaled, so activations stay in range) and random BN statistics and affine parameters.

    python scripts/bench_models.py OUT_DIR        # resnet18, resnet50, preact_resnet, densenet121, mlp (.onnx)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """Collects nodes and initializers; every layer gets a unique name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        name = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> str:
        name = self.name("conv")
        weight = self.rng.standard_normal((cout, cin, kernel, kernel)) * np.sqrt(2.0 / (cin * kernel * kernel))
        inputs = [x, self.const(f"{name}.weight", weight)]
        if bias:
            inputs.append(self.const(f"{name}.bias", self.rng.normal(0, 0.1, cout)))
        pad = kernel // 2
        self.nodes.append(helper.make_node("Conv", inputs, [name], name=name, pads=[pad] * 4, strides=[stride] * 2))
        return name

    def bn(self, x: str, channels: int) -> str:
        name = self.name("bn")
        rng = self.rng
        params = [
            self.const(f"{name}.{key}", value)
            for key, value in (
                ("weight", rng.uniform(0.5, 1.5, channels)),
                ("bias", rng.normal(0, 0.1, channels)),
                ("running_mean", rng.normal(0, 0.1, channels)),
                ("running_var", rng.uniform(0.5, 1.5, channels)),
            )
        ]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *params], [name], name=name))
        return name

    def linear(self, x: str, fin: int, fout: int) -> str:
        weight = self.rng.standard_normal((fout, fin)) * np.sqrt(2.0 / fin)
        name = self.name("fc")
        inputs = [x, self.const(f"{name}.weight", weight), self.const(f"{name}.bias", self.rng.normal(0, 0.1, fout))]
        self.nodes.append(helper.make_node("Gemm", inputs, [name], name=name, transB=1))
        return name

    def model(self, x_shape: list, output: str, out_shape: list, graph_name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bnfold-bench")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model

    def head(self, x: str, channels: int, classes: int = 100) -> str:
        return self.linear(self.op("Flatten", [self.op("GlobalAveragePool", [x])]), channels, classes)


def resnet18(size: int = 96) -> onnx.ModelProto:
    """torchvision ResNet-18: Conv → BN → ReLU everywhere; every BN follows a Conv."""
    net = Net(1)
    x = net.op("Relu", [net.bn(net.conv("input", 3, 64, 7, 2), 64)])
    x = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
        y = net.op("Relu", [net.bn(net.conv(x, cin, cout, 3, stride), cout)])
        y = net.bn(net.conv(y, cout, cout, 3), cout)
        skip = x if stride == 1 and cin == cout else net.bn(net.conv(x, cin, cout, 1, stride), cout)
        x, cin = net.op("Relu", [net.op("Add", [y, skip])]), cout
    return net.model(["N", 3, size, size], net.head(x, 512), ["N", 100], "resnet18")


def resnet50(size: int = 224) -> onnx.ModelProto:
    """torchvision ResNet-50 (25.6 M parameters, ~100 MB in float32): bottleneck blocks, every BN after a Conv."""
    net = Net(5)
    x = net.op("Relu", [net.bn(net.conv("input", 3, 64, 7, 2), 64)])
    x = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(blocks):
            step = stride if block == 0 else 1
            y = net.op("Relu", [net.bn(net.conv(x, cin, width, 1), width)])
            y = net.op("Relu", [net.bn(net.conv(y, width, width, 3, step), width)])
            y = net.bn(net.conv(y, width, 4 * width, 1), 4 * width)
            skip = x if block else net.bn(net.conv(x, cin, 4 * width, 1, step), 4 * width)
            x, cin = net.op("Relu", [net.op("Add", [y, skip])]), 4 * width
    return net.model(["N", 3, size, size], net.head(x, 2048, 1000), ["N", 1000], "resnet50")


def preact_resnet(size: int = 96) -> onnx.ModelProto:
    """Pre-activation ResNet-18 (He et al. 2016): BN → ReLU → Conv; the block's first BN follows an Add."""
    net = Net(2)
    x = net.conv("input", 3, 64, 3)
    cin = 64
    for cout, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
        pre = net.op("Relu", [net.bn(x, cin)])
        y = net.conv(pre, cin, cout, 3, stride)
        y = net.conv(net.op("Relu", [net.bn(y, cout)]), cout, cout, 3)
        skip = x if stride == 1 and cin == cout else net.conv(pre, cin, cout, 1, stride)
        x, cin = net.op("Add", [y, skip]), cout
    x = net.op("Relu", [net.bn(x, cin)])
    return net.model(["N", 3, size, size], net.head(x, 512), ["N", 100], "preact_resnet")


def densenet121(size: int = 64, growth: int = 32) -> onnx.ModelProto:
    """torchvision DenseNet-121: each layer is Concat → BN → ReLU → Conv1x1 → BN → ReLU → Conv3x3, and every
    transition BN → ReLU → Conv1x1 → AvgPool; the BN after each Concat has nothing to fold into."""
    net = Net(3)
    x = net.op("Relu", [net.bn(net.conv("input", 3, 64, 7, 2), 64)])
    x = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = 64
    for index, layers in enumerate((6, 12, 24, 16)):
        features = [x]
        for _ in range(layers):
            joined = features[0] if len(features) == 1 else net.op("Concat", features, axis=1)
            y = net.conv(net.op("Relu", [net.bn(joined, channels)]), channels, 4 * growth, 1)
            y = net.conv(net.op("Relu", [net.bn(y, 4 * growth)]), 4 * growth, growth, 3)
            features.append(y)
            channels += growth
        x = net.op("Concat", features, axis=1)
        if index < 3:
            x = net.conv(net.op("Relu", [net.bn(x, channels)]), channels, channels // 2, 1)
            x = net.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
            channels //= 2
    x = net.op("Relu", [net.bn(x, channels)])
    return net.model(["N", 3, size, size], net.head(x, channels), ["N", 100], "densenet121")


def mlp(features: int = 256, width: int = 1024, depth: int = 4) -> onnx.ModelProto:
    """A tabular MLP: BN1d on the input, then (Linear → BN1d → ReLU) × depth, then a Linear head."""
    net = Net(4)
    x = net.bn("input", features)
    fin = features
    for _ in range(depth):
        x = net.op("Relu", [net.bn(net.linear(x, fin, width), width)])
        fin = width
    return net.model(["N", features], net.linear(x, fin, 10), ["N", 10], "mlp")


BUILDERS = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "preact_resnet": preact_resnet,
    "densenet121": densenet121,
    "mlp": mlp,
}
# Inputs for the benchmark: batch 1 for the CNNs (latency), 64 rows for the MLP.
BATCH = {"resnet18": 1, "resnet50": 1, "preact_resnet": 1, "densenet121": 1, "mlp": 64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        onnx.save(build(), args.out / f"{name}.onnx")
        print(f"wrote {args.out / name}.onnx")


if __name__ == "__main__":
    main()
