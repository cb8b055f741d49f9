"""The original's own rounding noise: its inputs and arithmetic constants nudged by one rounding step.

A correct fold moves rounding: the folded model computes the same function with other
roundings. How far that moves a value depends on the computation (depth,
cancellation, a Sigmoid's absolute precision), so the check measures it instead of
assuming a ratio: the original runs once more on the same session, with every float
input and every float constant that arithmetic reads (weights, biases, BN statistics)
multiplied by 1 ± ε, the sign drawn at random per element (seeded). Its deviation
from the plain run is the noise the computation itself shows at each value
(check/comparison.py judges the folded model against it).

Only constants whose every reader is an arithmetic op (directly, or through nodes
that only move, cast or broadcast values) are nudged: a float that sets a shape
(Resize scales, Range bounds) or a threshold (Clip) would change more than rounding.
Constant nodes count as initializers (the session lists them as such, check/sessions.py).
The nudged copies are held while the run lasts, within NUDGE_BUDGET bytes, smallest first:
on a model larger than that, the large weights keep their values and
the inputs and the small constants (every BN's statistics) carry the noise.

Weights (more than NUDGE_MAX_ELEMENTS values) keep their values: a constant fed at
run time is not pre-packed by onnxruntime, which makes the run 2-3x slower.

That noise comes from perturbations at the inputs and at the BN/bias constants; it
reaches a value smoothly, through every layer between. A fold changes rounding inside
every layer it rewrites, and rounding is white: independent per element. Where a
layer cancels (a kernel whose taps nearly sum to zero, a channel far smaller than
its inputs), white noise in its input is amplified far more than a smooth one, and a
correct fold of a deep, reparameterized model (MobileOne) can exceed the first
noise at such a channel. So when a site fails, the check measures again on a copy
of the original where every layer with a constant weight (Conv, ConvTranspose,
Gemm, MatMul, BatchNormalization) sees its input times 1 + u, u uniform in ±ε/2 per
element (RandomUniformLike, seeded): the white rounding noise of the layer before
(`perturb_layer_inputs`), and judges again (equivalence.py). Only then: the extra
nodes cost every run. Such a deviation is quantized: it is one rounding step of a
large upstream value flipping or not, so one run can miss it (two runs' flips can
even cancel). The white-noise run is made WHITE_RUNS times (the generator moves on
each run, reproducibly), and each value takes, element by element, the run farthest
from the plain one (`farthest`), the first noise run included.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from bnfold.check.models import Source
from bnfold.errors import first_line

logger = logging.getLogger(__name__)

NUDGE_BUDGET = 64 * 1024 * 1024
WHITE_RUNS = 3
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


def nudged_runs(
    session, constants: list[onnx.TensorProto], base_dir: Path | None, feeds: Sequence[Mapping], seed: int
) -> list[dict[str, np.ndarray]] | None:
    """The original once more on `session` (where `constants` are overridable), with its inputs and `constants`
    nudged by a rounding step; None if that fails."""
    try:
        overrides = nudged_constants(constants, base_dir, seed)
        return [session.run({**nudged_feeds(feed, seed), **overrides}) for feed in feeds]
    except Exception as error:  # noqa: BLE001 - without it the fixed tolerances judge
        logger.info("no noise run of the original (fixed tolerances instead): %s", first_line(error))
        return None


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


# Layers whose input 0 a fold's rounding reaches, when their input 1 (the weight, or BN's scale) is a constant.
_LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"})


def perturb_layer_inputs(graph: onnx.GraphProto, seed: int) -> None:
    """Multiply input 0 of every layer of `graph` with a constant float weight by 1 + u, u uniform in ±ε/2 of the
    weight's type, drawn per element by a seeded RandomUniformLike node (a new one for every run)."""
    weights = {tensor.name: tensor.data_type for tensor in graph.initializer if tensor.data_type in _FLOATS}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        dtype = weights.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type in _LAYERS and node.domain in ("", "ai.onnx") and dtype is not None and node.input[0]:
            nodes.extend(_perturbation(node, index, _FLOATS[dtype], seed))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _perturbation(node: onnx.NodeProto, index: int, dtype: np.dtype, seed: int) -> list[onnx.NodeProto]:
    """Nodes computing input 0 of `node` times 1 + u; `node` then reads that instead."""
    prefix = f"bnfold_rounding_{index}"
    epsilon = float(np.finfo(dtype).eps) / 2  # a rounding moves a value by at most half a step
    source, node.input[0] = node.input[0], f"{prefix}_x"
    make = onnx.helper.make_node
    return [
        make("RandomUniformLike", [source], [f"{prefix}_u"], low=-epsilon, high=epsilon, seed=float(seed + index)),
        make("Constant", [], [f"{prefix}_one"], value=numpy_helper.from_array(np.array(1, dtype))),
        make("Add", [f"{prefix}_u", f"{prefix}_one"], [f"{prefix}_factor"]),
        make("Mul", [source, f"{prefix}_factor"], [f"{prefix}_x"]),
    ]


Runs = list[dict[str, np.ndarray]]  # one dict of values per draw


def farthest(expected: Runs, noise_runs: Sequence[Runs]) -> Runs:
    """Per draw and value: element by element, the noise run's value farthest from the plain run's."""
    combined: Runs = []
    for index, plain in enumerate(expected):
        merged: dict[str, np.ndarray] = {}
        for name, value in plain.items():
            best = noise_runs[0][index][name]
            for other in noise_runs[1:]:
                candidate = other[index][name]
                if value.dtype.kind == "f" and candidate.shape == best.shape == value.shape:
                    with np.errstate(invalid="ignore", over="ignore"):  # ±inf - ±inf: such positions keep `best`
                        best = np.where(np.abs(candidate - value) > np.abs(best - value), candidate, best)
            merged[name] = best
        combined.append(merged)
    return combined


def with_white_noise(
    source: Source,
    constants: list[onnx.TensorProto],
    extra_outputs: list[str],
    feeds: Sequence[Mapping],
    seed: int,
    runs: tuple[Runs, Runs],
) -> Runs:
    """The first noise run widened by WHITE_RUNS runs of the original with white rounding noise at every layer's
    input, its inputs and `constants` (the first run's, `nudgeable`) nudged as before; `runs`: the plain runs and
    the first noise run, which stands when the white runs cannot run."""
    expected, noise = runs
    try:
        session = source.session(extra_outputs, constants, lambda graph: perturb_layer_inputs(graph, seed))
    except Exception as error:  # noqa: BLE001 - onnxruntime raises many types; the first noise stands
        logger.info("no white-noise run of the original: %s", first_line(error))
        return noise
    try:
        white = [nudged_runs(session, constants, source.base_dir, feeds, seed) for _ in range(WHITE_RUNS)]
    finally:
        session.close()
    return farthest(expected, [noise, *(run for run in white if run is not None)])
