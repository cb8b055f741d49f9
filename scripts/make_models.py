"""Regenerate the sample models in models/ (numpy + onnx only; no torch).

    python scripts/make_models.py            # writes models/*.onnx

Every BN gets random running statistics and affine parameters, so a wrong fold
shows up as a large numerical difference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    """Collects nodes and initializers; names values after the layer that makes them."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:])) or 1
        return self.const(name, (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32))

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def batch_norm(self, x: str, name: str, channels: int) -> str:
        rng = self.rng
        params = {
            "scale": rng.uniform(0.5, 1.5, channels),
            "bias": rng.normal(0, 0.2, channels),
            "mean": rng.normal(0, 0.2, channels),
            "var": rng.uniform(0.3, 1.5, channels),
        }
        inputs = [x] + [self.const(f"{name}.{k}", v.astype(np.float32)) for k, v in params.items()]
        return self.node("BatchNormalization", inputs, name, epsilon=1e-5)

    def model(self, inputs, outputs, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "sample", inputs, outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bnfold-make-models", doc_string=doc
        )
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model)


def sample_cnn() -> onnx.ModelProto:
    """A tiny CNN with one BN of every kind bnfold handles (8 BN in all)."""
    b = GraphBuilder(seed=7)
    x = b.batch_norm("image", "input_norm", 3)  # standalone: nothing before it
    x = b.node(
        "Conv",
        [x, b.weight("conv1.w", (8, 3, 3, 3)), b.const("conv1.b", np.zeros(8, np.float32))],
        "conv1",
        pads=[1, 1, 1, 1],
    )
    x = b.node("Relu", [b.batch_norm(x, "bn1", 8)], "relu1")
    x = b.node("Conv", [x, b.weight("dw.w", (8, 1, 3, 3))], "dw", group=8, pads=[1, 1, 1, 1], strides=[2, 2])
    x = b.batch_norm(b.batch_norm(x, "bn2", 8), "bn2b", 8)  # a BN → BN chain
    x = b.node("Relu", [x], "relu2")
    x = b.node("Conv", [x, b.weight("pw.w", (16, 4, 1, 1))], "pw", group=2)
    skip = b.node("Relu", [x], "skip")  # the pointwise output has two consumers
    x = b.node("Add", [b.batch_norm(x, "bn3", 16), skip], "residual")
    x = b.node(
        "ConvTranspose",
        [x, b.weight("up.w", (16, 4, 2, 2)), b.const("up.b", np.zeros(8, np.float32))],
        "up",
        group=2,
        strides=[2, 2],
    )
    x = b.node("Relu", [b.batch_norm(x, "bn_up", 8)], "relu_up")
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "pool")], "flat")
    x = b.node("Gemm", [x, b.weight("fc1.w", (32, 8)), b.const("fc1.b", np.zeros(32, np.float32))], "fc1", transB=1)
    x = b.node("Relu", [b.batch_norm(x, "bn_fc1", 32)], "relu_fc1")
    x = b.node("MatMul", [x, b.weight("fc2.w", (32, 10))], "fc2")
    x = b.batch_norm(x, "bn_fc2", 10)
    b.nodes.append(helper.make_node("Identity", [x], ["logits"], name="out"))
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    return b.model(
        [image],
        [logits],
        "bnfold sample: Conv, depthwise Conv, grouped Conv, ConvTranspose, "
        "Gemm and MatMul each followed by BN; a BN chain; a standalone BN; a shared Conv output.",
    )


def textbook_bn() -> onnx.ModelProto:
    """One BN on the input, the way Keras exports it (ε = 1e-3): the questions people ask about BN at inference.

    Channel 0 is the textbook case (γ = 1, β = 0, μ = 0, σ² = 1: the output is 0.9995004·x, not x), channel 1
    is dead (γ = 0), in channel 2 ε dominates σ² (1e-4), channel 3 is ordinary.
    """
    b = GraphBuilder(seed=11)
    params = {
        "scale": [1.0, 0.0, 1.2, 0.8],
        "bias": [0.0, 0.5, 0.1, -0.2],
        "mean": [0.0, 0.0, 0.3, -0.1],
        "var": [1.0, 1.0, 1e-4, 0.6],
    }
    inputs = ["x"] + [b.const(f"bn.{k}", np.array(v, np.float32)) for k, v in params.items()]
    y = b.node("BatchNormalization", inputs, "bn", epsilon=1e-3)
    b.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])
    return b.model([x], [out], "bnfold sample: one BatchNormalization with ε = 1e-3, for --explain.")


MODELS = {"sample_cnn.onnx": sample_cnn, "textbook_bn.onnx": textbook_bn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in MODELS.items():
        path = args.out / name
        onnx.save(build(), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
