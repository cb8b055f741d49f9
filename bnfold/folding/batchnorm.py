"""Reading a BatchNormalization node: its mode, its constant parameters, its (s, t)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.folding import fold_math
from bnfold.folding.affine import AffineParams
from bnfold.graph.constant_eval import ConstantResolver, constant_input
from bnfold.graph.editing import values_in_use
from bnfold.graph.node_attrs import float_attr, int_attr
from bnfold.graph.skip import Skip
from bnfold.graph.value_types import ValueTypes

PARAMETER_NAMES = ("scale", "B", "input_mean", "input_var")

# The spec's default, 1e-5 as the float32 attribute it is: 9.99999974738e-06, as runtimes read it (1e-5 as a
# Python float moves a float64 fold by ~3e-13).
DEFAULT_EPSILON = float(np.float32(1e-5))


def training_reason(bn: ir.Node, opset: int) -> str | None:
    """Why this BN does not compute the frozen inference map, or None if it does."""
    if int_attr(bn, "training_mode", 0) == 1:
        return "training_mode=1 (uses batch statistics)"
    if opset < 7 and int_attr(bn, "is_test", 0) == 0:
        return "is_test=0 (training mode, opset < 7)"
    optional_outputs = [v for v in bn.outputs[1:] if v is not None and v.name]
    if values_in_use(optional_outputs):
        return "optional outputs (running/saved mean or variance) are in use"
    if opset < 14 and optional_outputs:
        return "declares optional outputs (training mode before opset 14)"
    return None


def read_params(bn: ir.Node, opset: int, resolver: ConstantResolver, types: ValueTypes) -> AffineParams:
    """The constant parameters of `bn` as the affine map (s, t); raises Skip with the reason otherwise."""
    arrays = read_raw_params(bn, resolver)
    per_element = opset < 9 and int_attr(bn, "spatial", 1) == 0 and not _one_element_per_channel(bn, arrays, types)
    # Only what the model states: inference costs a pass over the graph, and every
    # move (and the rewrite) checks the channel count against what it changes anyway.
    check_parameter_shapes(types.stated_shape(bn.inputs[0]), arrays, per_element)
    gamma, beta, mean, var = arrays
    epsilon = float_attr(bn, "epsilon", DEFAULT_EPSILON)
    for name, array in zip(PARAMETER_NAMES, arrays, strict=True):
        if not np.isfinite(array.astype(np.float64)).all():
            raise Skip(f"parameter '{name}' contains NaN or Inf")
    denominator = var.astype(np.float64) + epsilon
    if (denominator <= 0).any():
        channel = int(np.flatnonzero(denominator.reshape(-1) <= 0)[0])
        raise Skip(f"input_var + epsilon <= 0 (at flat index {channel})")
    scale, shift = fold_math.bn_scale_shift(gamma, beta, mean, var, epsilon)
    return AffineParams(scale=scale, shift=shift, per_element=per_element)


def _one_element_per_channel(bn: ir.Node, arrays: list[np.ndarray], types: ValueTypes) -> bool:
    """An [N, C] input (MXNet's fc → BN exports spatial=0): its per-element statistics are per-channel ones."""
    return all(array.ndim == 1 for array in arrays) and types.rank(bn.inputs[0]) == 2


def read_raw_params(bn: ir.Node, resolver: ConstantResolver) -> list[np.ndarray]:
    """[γ, β, μ, σ²] as stored; Skip when one is missing or not constant."""
    return [_parameter(bn, index, resolver) for index in range(1, 5)]


def _parameter(bn: ir.Node, index: int, resolver: ConstantResolver) -> np.ndarray:
    value = bn.inputs[index] if index < len(bn.inputs) else None
    return constant_input(resolver, value, f"parameter '{PARAMETER_NAMES[index - 1]}'")


def check_parameter_shapes(data_shape: tuple | None, arrays: list[np.ndarray], per_element: bool) -> None:
    shapes = [tuple(a.shape) for a in arrays]
    if len(set(shapes)) != 1:
        raise Skip(f"parameter shapes differ: {', '.join(str(s) for s in shapes)}")
    shape = shapes[0]
    if per_element:
        expected = None if data_shape is None else data_shape[1:]
        if expected is not None and None not in expected and shape != expected:
            raise Skip(f"parameter shape {shape} does not match the input's per-element shape {expected}")
        return
    if len(shape) != 1:
        raise Skip(f"parameter shape {shape} is not a per-channel vector")
    channels = None if data_shape is None or len(data_shape) < 2 else data_shape[1]
    if channels is not None and channels != shape[0]:
        raise Skip(f"parameter shape {shape} does not match channel count {channels}")
