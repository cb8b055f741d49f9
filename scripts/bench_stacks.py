"""The stacked models the benchmark times, built with onnx.helper: Conv+BN+ReLU layers with their own
weights, layers sharing one weight and one BN parameter set, a chain of ReLU with nothing to fold,
and a 2.5 GiB external-data stack written layer by layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from bench_process import clean
from onnx import TensorProto, helper, numpy_helper

BN_PARAMS = ("scale", "bias", "mean", "var")


def layer_nodes(i: int, x: str, pad: int) -> list[onnx.NodeProto]:
    """Conv → BN → ReLU number i, reading `x`, writing f"r{i}"."""
    return [
        helper.make_node("Conv", [x, f"conv{i}.weight"], [f"c{i}"], name=f"conv{i}", pads=[pad] * 4),
        helper.make_node("BatchNormalization", [f"c{i}"] + [f"bn{i}.{n}" for n in BN_PARAMS], [f"b{i}"], name=f"bn{i}"),
        helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}"),
    ]


def bn_values(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    values = (
        rng.uniform(0.5, 1.5, channels),
        rng.normal(0, 0.1, channels),
        rng.normal(0, 0.1, channels),
        rng.uniform(0.5, 1.5, channels),
    )
    return {name: v.astype(np.float32) for name, v in zip(BN_PARAMS, values, strict=True)}


def stack_model(nodes, inits, channels: int, output: str) -> onnx.ModelProto:
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, 8, 8]) for name in ("input", output)]
    model = helper.make_model(
        helper.make_graph(nodes, "stack", io[:1], io[1:], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


def conv_bn_stack(layers: int, channels: int, kernel: int, seed: int = 0) -> onnx.ModelProto:
    """layers × (Conv(channels → channels, kernel×kernel, pad) + BN + ReLU), random weights and statistics."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    for i in range(layers):
        w = rng.standard_normal((channels, channels, kernel, kernel), dtype=np.float32)
        w *= np.float32(1.0 / np.sqrt(channels * kernel * kernel))
        inits.append(numpy_helper.from_array(w, f"conv{i}.weight"))
        inits += [numpy_helper.from_array(v, f"bn{i}.{n}") for n, v in bn_values(rng, channels).items()]
        nodes += layer_nodes(i, "input" if i == 0 else f"r{i - 1}", kernel // 2)
    return stack_model(nodes, inits, channels, f"r{layers - 1}")


def shared_stack(layers: int, channels: int, kernel: int, seed: int = 0) -> onnx.ModelProto:
    """`conv_bn_stack`'s layers, all reading one weight and one BN parameter set (a model that reuses them)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, channels, kernel, kernel), dtype=np.float32)
    w *= np.float32(1.0 / np.sqrt(channels * kernel * kernel))
    inits = [numpy_helper.from_array(w, "w")]
    inits += [numpy_helper.from_array(v, f"bn.{n}") for n, v in bn_values(rng, channels).items()]
    nodes = []
    for i in range(layers):
        x = "input" if i == 0 else f"r{i - 1}"
        nodes += [
            helper.make_node("Conv", [x, "w"], [f"c{i}"], name=f"conv{i}", pads=[kernel // 2] * 4),
            helper.make_node(
                "BatchNormalization", [f"c{i}", *(f"bn.{n}" for n in BN_PARAMS)], [f"b{i}"], name=f"bn{i}"
            ),
            helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
    return stack_model(nodes, inits, channels, f"r{layers - 1}")


def relu_chain(length: int, channels: int = 4) -> onnx.ModelProto:
    """`length` ReLU one after the other: a large graph with nothing to fold."""
    nodes = [
        helper.make_node("Relu", ["input" if i == 0 else f"r{i - 1}"], [f"r{i}"], name=f"relu{i}")
        for i in range(length)
    ]
    return stack_model(nodes, [], channels, f"r{length - 1}")


def write_inline(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def write_external(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean(path)  # onnx.save appends to an existing data file
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    return path


def write_big_external(path: Path, target_bytes: int) -> Path:
    """A Conv(256→256, 3×3)+BN+ReLU stack of `target_bytes`, its data written layer by layer (bounded memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = max(1, target_bytes // (256 * 256 * 9 * 4))
    data_path = path.with_name(path.name + ".data")
    rng = np.random.default_rng(0)
    nodes, inits, offset = [], [], 0
    with open(data_path, "wb") as data:
        for i in range(layers):
            tensors = {
                f"conv{i}.weight": rng.standard_normal((256, 256, 3, 3), dtype=np.float32) * np.float32(0.02),
                **{f"bn{i}.{n}": v for n, v in bn_values(rng, 256).items()},
            }
            for name, array in tensors.items():
                raw = array.tobytes()
                data.write(raw)
                inits.append(_external_tensor(name, array, data_path.name, offset, len(raw)))
                offset += len(raw)
            nodes += layer_nodes(i, "input" if i == 0 else f"r{i - 1}", 1)
    onnx.save(stack_model(nodes, inits, 256, f"r{layers - 1}"), path)
    return path


def _external_tensor(name: str, array: np.ndarray, location: str, offset: int, length: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor
