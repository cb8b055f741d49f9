"""The original's own rounding noise: its inputs and arithmetic constants nudged by one rounding step.

A correct fold moves rounding: the folded model computes the same function with other
roundings. How far that moves a value depends on the computation (depth,
cancellation, a Sigmoid's absolute precision), so the check measures it instead of
assuming a ratio: the original runs once more on the same session, with every float
input and every float constant that arithmetic reads (weights, biases, BN statistics)
multiplied by 1 ± ε, the sign drawn at random per element (seeded). Its deviation
from the plain run is the noise the computation itself shows at each value
(compare.py judges the folded model against it).

Only constants whose every reader is an arithmetic op (directly, or through nodes
that only move, cast or broadcast values) are nudged: a float that sets a shape
(Resize scales, Range bounds) or a threshold (Clip) would change more than rounding.
Constant nodes count as initializers (the session lists them as such, runnable.py).
The nudged copies are held while the run lasts, within NUDGE_BUDGET bytes, smallest first:
on a model larger than that, the large weights keep their values and
the inputs and the small constants (every BN's statistics) carry the noise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

NUDGE_BUDGET = 64 * 1024 * 1024
# Larger tensors (weights) keep their values: a constant fed at run time is not pre-packed by onnxruntime,
# which made every run of the original 2-3x slower on ResNet-50.
NUDGE_MAX_ELEMENTS = 16 * 1024
_FLOATS: dict[int, np.dtype] = {TensorProto.FLOAT: np.dtype(np.float32), TensorProto.DOUBLE: np.dtype(np.float64)}
# Ops whose constant inputs enter arithmetic only (never a shape, an index or a threshold).
_ARITHMETIC = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Sum",
        "PRelu",
        "DeformConv",
    }
)


# Nodes whose input 0 reaches their output as values moved, cast or broadcast, never computed on.
_PASSING = frozenset(
    {"Identity", "Cast", "CastLike", "Expand", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose"}
)


def nudgeable(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The main graph's float constants (initializers, Constant nodes) that only arithmetic reads, smallest
    first, within the budget."""
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, index))
    inputs = {value.name for value in model.graph.input}
    outputs = {value.name for value in model.graph.output}

    def arithmetic_only(name: str, depth: int = 0) -> bool:
        uses = readers.get(name)
        if not uses or name in outputs or depth > 8:
            return False
        return all(
            node.domain in ("", "ai.onnx")
            and (
                node.op_type in _ARITHMETIC
                or (node.op_type in _PASSING and index == 0 and arithmetic_only(node.output[0], depth + 1))
            )
            for node, index in uses
        )

    tensors = [*model.graph.initializer, *constant_tensors(model.graph)]
    candidates = [
        tensor
        for tensor in tensors
        if tensor.data_type in _FLOATS
        and tensor.name not in inputs
        and int(np.prod(tensor.dims, dtype=np.int64)) <= NUDGE_MAX_ELEMENTS
        and arithmetic_only(tensor.name)
    ]
    chosen, total = [], 0
    for tensor in sorted(candidates, key=_nbytes):
        total += _nbytes(tensor)
        if total > NUDGE_BUDGET:
            break
        chosen.append(tensor)
    return chosen


def constant_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The tensors of the graph's Constant nodes that hold one in `value`, named after their output."""
    found = []
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        value = next((attribute.t for attribute in node.attribute if attribute.name == "value"), None)
        if value is not None and value.data_location != TensorProto.EXTERNAL:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            found.append(tensor)
    return found


def nudged_constants(tensors: list[onnx.TensorProto], base_dir: Path | None, seed: int) -> dict[str, np.ndarray]:
    """Each tensor's values times 1 ± ε (ε of its own type)."""
    rng = np.random.default_rng(seed)
    folder = os.fspath(base_dir) if base_dir is not None else ""
    return {tensor.name: _nudge(numpy_helper.to_array(tensor, folder), rng) for tensor in tensors}


def nudged_feeds(feeds: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The float inputs times 1 ± ε; the others as they are."""
    rng = np.random.default_rng(seed + 1)
    return {
        name: _nudge(value, rng) if value.dtype in (np.float32, np.float64) else value for name, value in feeds.items()
    }


def _nudge(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if array.dtype not in (np.float32, np.float64):
        return array
    signs = rng.integers(0, 2, size=array.shape, dtype=np.int8).astype(array.dtype) * 2 - 1
    # np.asarray: numpy gives a 0-d product back as a scalar, which onnxruntime does not take as a feed
    return np.asarray(array * (1 + np.finfo(array.dtype).eps * signs), dtype=array.dtype)


def _nbytes(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) * _FLOATS[int(tensor.data_type)].itemsize
