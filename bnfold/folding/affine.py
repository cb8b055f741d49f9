"""Per-channel affine maps y = s·x + t on axis 1: what a BN and its elementwise kin compute.

A frozen BatchNormalization is one (batchnorm.py reads it). So is a Mul, Add, Sub or
Div of a tensor by a constant that broadcasts along the channel axis 1 only, or is
a single number. The moves in moves.py fold any of them into a neighbouring linear
layer, so chains such as Conv → Mul → Add → BN or BN → Mul → Conv fold completely.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from bnfold.graph.node_attrs import in_default_domain
from bnfold.graph.op_types import ELEMENTWISE_AFFINE
from bnfold.graph.skip import Skip

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class AffineParams:
    """y = scale·x + shift over axis 1, in float64.

    scale/shift are [C] (per channel), [1] (one number for every channel), or for a
    per-element BN (spatial=0, opset < 9) [C, D1, …].
    """

    scale: np.ndarray
    shift: np.ndarray
    per_element: bool = False

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])

    @property
    def has_shift(self) -> bool:
        return bool(np.any(self.shift != 0))

    def for_channels(self, count: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        """(s, t) as [count] vectors; Skip when the map does not have `count` channels."""
        if self.per_element:
            raise Skip("per-element statistics (spatial=0) cannot fold into a weight")
        if self.channels == count:
            return self.scale, self.shift
        if self.channels == 1:
            return np.full(count, self.scale[0]), np.full(count, self.shift[0])
        raise Skip(f"{where} has {count} channels, the affine map has {self.channels}")

    def sliced(self, start: int, stop: int) -> AffineParams:
        if self.channels == 1:
            return self
        return replace(self, scale=self.scale[start:stop], shift=self.shift[start:stop])

    def then(self, after: AffineParams) -> AffineParams:
        """The map x ↦ after(self(x)): scale s₁·s₂, shift t₁·s₂ + t₂ (a one-number map broadcasts)."""
        if self.per_element or after.per_element:
            raise Skip("per-element statistics (spatial=0) do not combine with a per-channel map")
        if 1 not in (self.channels, after.channels) and self.channels != after.channels:
            raise Skip(f"an affine map of {self.channels} channels feeds one of {after.channels}")
        return AffineParams(self.scale * after.scale, self.shift * after.scale + after.shift)

    def repeated(self, times: int) -> AffineParams:
        """Each channel's (s, t) repeated `times`: channel c becomes features c·times … c·times + times − 1."""
        return replace(self, scale=np.repeat(self.scale, times), shift=np.repeat(self.shift, times))


@dataclass(frozen=True)
class ElementwiseAffine:
    data_index: int
    params: AffineParams
    axis: int | None  # the axis the constant varies along; None for one number (every axis)


def read_elementwise(node: ir.Node, constant_of, rank_of, dim_of) -> ElementwiseAffine:
    """Read a Mul/Add/Sub/Div of a tensor by a constant that varies along at most one axis as an affine map.

    `constant_of(value)` gives a constant's array or None; `rank_of(value)` the data's
    rank and `dim_of(value, axis)` one of its dims, or None when unknown.
    """
    if node.op_type not in ELEMENTWISE_AFFINE or not in_default_domain(node) or len(node.inputs) != 2:
        raise Skip(f"{node.op_type} is not an elementwise affine op")
    arrays = [constant_of(value) for value in node.inputs]
    if (arrays[0] is None) == (arrays[1] is None):
        raise Skip(f"{node.op_type} does not combine a tensor with a constant")
    data_index = 0 if arrays[1] is not None else 1
    constant = arrays[1 - data_index]
    if constant.dtype.kind != "f":
        raise Skip("the constant is not floating point")
    data = node.inputs[data_index]
    if "broadcast" in node.attributes:  # opset < 7: B aligns with A from `axis` (or from the right)
        if data_index != 0:
            raise Skip("legacy broadcast (opset < 7) of the data input")
        constant = _legacy_aligned(node, constant, rank_of(data))
    vector, axis = _one_axis_vector(constant, rank_of(data))
    if axis is not None and dim_of(data, axis) != vector.shape[0]:
        raise Skip("the constant would change the input's shape, or that shape is unknown")
    return ElementwiseAffine(data_index, _params(node.op_type, data_index, vector), axis)


def _legacy_aligned(node: ir.Node, constant: np.ndarray, rank: int | None) -> np.ndarray:
    """B of a Mul/Add/Sub/Div before opset 7, reshaped to numpy broadcasting against A of rank `rank`."""
    attr = node.attributes.get("broadcast")
    if attr is None or attr.value != 1 or constant.size == 1:
        return constant
    if rank is None:
        raise Skip("rank of the input is unknown, so the broadcast axis is too")
    axis_attr = node.attributes.get("axis")
    start = rank - constant.ndim if axis_attr is None else int(axis_attr.value) % rank
    if start < 0 or start + constant.ndim > rank:
        raise Skip(f"legacy broadcast of a rank-{constant.ndim} constant from axis {start} of a rank-{rank} input")
    return constant.reshape(constant.shape + (1,) * (rank - start - constant.ndim))


def _one_axis_vector(constant: np.ndarray, rank: int | None) -> tuple[np.ndarray, int | None]:
    """The constant as a vector and the data axis it runs along, if it varies along one axis (None: one number)."""
    if rank is not None and constant.ndim > rank:
        raise Skip(f"the constant has rank {constant.ndim}, more than the input's {rank}")
    if rank is None and constant.ndim > 1:  # it could raise the output's rank
        raise Skip("rank of the input is unknown, so the broadcast axis is too")
    if constant.size == 1:
        return constant.reshape(1).astype(np.float64), None
    if rank is None:
        raise Skip("rank of the input is unknown, so the broadcast axis is too")
    aligned = (1,) * (rank - constant.ndim) + constant.shape
    axes = [axis for axis, size in enumerate(aligned) if size != 1]
    if len(axes) != 1:
        raise Skip(f"the constant varies along axes {axes}, not along one channel axis")
    return constant.reshape(-1).astype(np.float64), axes[0]


def _params(op: str, data_index: int, vector: np.ndarray) -> AffineParams:
    ones, zeros = np.ones_like(vector), np.zeros_like(vector)
    if op == "Mul":
        return AffineParams(vector, zeros)
    if op == "Add":
        return AffineParams(ones, vector)
    if op == "Sub":
        return AffineParams(ones, -vector) if data_index == 0 else AffineParams(-ones, vector)
    if data_index == 1:
        raise Skip("constant / x is not affine in x")
    if np.any(vector == 0):
        raise Skip("division by a constant that contains 0")
    return AffineParams(1.0 / vector, zeros)
