"""Tiny-graph builders and the reference check shared by the tests."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from runtime_cost import assert_runtime_not_costlier

import bnfold

FP32_RTOL = 1e-5  # relative to the output's scale max|a|


def tensor_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8, functions=()):
    """inputs/outputs: (name, dtype, shape) triples; initializers: {name: array}."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, tensor_type(d), s) for n, d, s in inputs],
        [helper.make_tensor_value_info(n, tensor_type(d), s) for n, d, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in dict(initializers).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], functions=list(functions))
    model.ir_version = ir_version
    _fill_output_shapes(model)
    return model


def _fill_output_shapes(model):
    """Give graph outputs declared without a shape their inferred type (the full checker wants one).

    Intermediate values stay untyped, as in many exporters' output.
    """
    if all(o.type.tensor_type.HasField("shape") for o in model.graph.output):
        return
    inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
    for output in model.graph.output:
        if not output.type.tensor_type.HasField("shape") and output.name in inferred:
            output.type.CopyFrom(inferred[output.name].type)


def bn_arrays(rng, channels, prefix="bn", dtype=np.float32, shape=None):
    """Random BN parameters {prefix.scale, .bias, .mean, .var}, var well above 0."""
    shape = (channels,) if shape is None else shape
    return {
        f"{prefix}.scale": rng.uniform(0.5, 1.5, shape).astype(dtype),
        f"{prefix}.bias": rng.normal(0, 0.3, shape).astype(dtype),
        f"{prefix}.mean": rng.normal(0, 0.3, shape).astype(dtype),
        f"{prefix}.var": rng.uniform(0.2, 1.5, shape).astype(dtype),
    }


def bn_node(x, y, prefix="bn", name=None, **attrs):
    params = [f"{prefix}.{k}" for k in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *params], [y], name=name or prefix, **attrs)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed=0, batch=3) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tensor.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_same_outputs(original, folded, rtol=FP32_RTOL, feeds=None):
    """Every output of `folded` equals `original`'s to rtol·max|original| on onnxruntime."""
    feeds = random_feeds(original) if feeds is None else feeds
    expected, actual = run(original, feeds), run(folded, feeds)
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        scale = np.max(np.abs(a64))
        assert scale > 0
        error = np.max(np.abs(a64 - b64)) / scale
        assert error <= rtol, f"relative error {error:.3e} > {rtol:.1e}"


def data_file(out: Path) -> Path:
    """The one data file bnfold wrote beside `out`: OUT.<12 hex digits>.data."""
    found = [p for p in out.parent.iterdir() if re.fullmatch(rf"{re.escape(out.name)}\.[0-9a-f]{{12}}\.data", p.name)]
    assert len(found) == 1, sorted(p.name for p in out.parent.iterdir())
    return found[0]


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def assert_sample_folded(model: onnx.ModelProto) -> None:
    """models/sample_cnn.onnx after a fold: of its 8 BN two are left, as they were: bn3 (its Conv's output is
    shared) and input_norm (before a Conv that pads with zeros: a BN, not an Add in its place)."""
    counts = op_counts(model)
    assert counts["BatchNormalization"] == 2 and counts["Mul"] == 0, counts


def fold_and_check(model, rtol=FP32_RTOL, **kwargs):
    """Fold `model`, assert the checker passes, outputs match and (by default) it costs no more;
    return (folded, records)."""
    result = bnfold.fold(model, **kwargs)
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(model, result.model, rtol=rtol)
    if kwargs.get("standalone", "bn") == "bn":
        assert_never_costlier(model, result.model)
    return result.model, result.records


# --- the "never costlier" contract, counted here independently of bnfold's own code ----------------

AFFINE_ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div"})


def every_node_list(model: onnx.ModelProto):
    """The node lists of the main graph, of every subgraph, and of every function body."""
    lists = [model.graph.node] + [f.node for f in model.functions]
    pending = list(lists)
    while pending:
        for node in pending.pop():
            for attr in node.attribute:
                for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    lists.append(graph.node)
                    pending.append(graph.node)
    return lists


def node_total(model: onnx.ModelProto) -> int:
    return sum(len(nodes) for nodes in every_node_list(model))


def affine_node_total(model: onnx.ModelProto) -> int:
    """BatchNormalization nodes plus Mul/Add/Sub/Div with a constant operand (an initializer or a Constant)."""
    constants = {t.name for t in model.graph.initializer}
    for nodes in every_node_list(model):
        constants.update(n.output[0] for n in nodes if n.op_type == "Constant")
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        constants.update(t.name for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                pending.extend(([attr.g] if attr.HasField("g") else []) + list(attr.graphs))
    return sum(
        node.op_type == "BatchNormalization"
        or (node.op_type in AFFINE_ELEMENTWISE and any(name in constants for name in node.input))
        for nodes in every_node_list(model)
        for node in nodes
    )


def assert_never_costlier(original: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    """No more nodes, and no more per-channel affine nodes, than the original had; and after onnxruntime's own
    optimization, no more nodes and no fused op lost (runtime_cost.py)."""
    assert node_total(folded) <= node_total(original), (node_total(original), node_total(folded))
    assert affine_node_total(folded) <= affine_node_total(original), (
        affine_node_total(original),
        affine_node_total(folded),
    )
    assert_runtime_not_costlier(original, folded)


def only_record(records):
    assert len(records) == 1, records
    return records[0]


def spoil(model, name, channel, factor, axis=0):
    """Multiply channel `channel` of initializer `name` along `axis` (0: a Conv's output channels) by `factor`."""
    spoiled = onnx.ModelProto.FromString(model.SerializeToString())
    tensor = next(t for t in spoiled.graph.initializer if t.name == name)
    array = numpy_helper.to_array(tensor).copy()
    index = [slice(None)] * array.ndim
    index[axis] = channel
    array[tuple(index)] *= factor
    tensor.CopyFrom(numpy_helper.from_array(array, name))
    return spoiled
