"""Inputs for the check: two seeded draws that exercise the model.

* float inputs: standard normal values.
* integer inputs: values that reach what the model does with them. Followed through
  Identity/Cast/Reshape/Squeeze/Unsqueeze/Flatten/Expand/Transpose, an input compared
  (Equal, Less, Greater, …) with constants gets those constants in draw A and other
  values in draw B; one used as Gather/OneHot indices stays inside the indexed axis;
  otherwise values come from 0..3.
* bool inputs: a scalar is True in draw A and False in draw B (both branches of an If
  it decides); tensors are random.
* free dimensions: 2 on axis 0 (a batch > 1 exercises per-sample broadcasting), 16
  elsewhere; when onnxruntime rejects that, the check retries with 32, 64, 128, 224.

When every input has a free batch axis and nothing else needs two runs, the two
draws are the two samples of one batch: one run per model instead of two.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnfold.errors import InputError

FREE_BATCH_DIM = 2
FREE_OTHER_DIMS = (16, 32, 64, 128, 224)
_DEFAULT_INTEGERS = (0, 1, 2, 3)
_FOLLOWED = frozenset({"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Transpose"})
_COMPARISONS = frozenset({"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"})
_INDEXING = {"Gather": 1, "GatherElements": 1, "GatherND": 1, "OneHot": 0}
_MAX_HINTS = 64


@dataclass(frozen=True)
class InputSpec:
    """A graph input the check must feed."""

    name: str
    elem_type: int
    dims: tuple[int | None, ...] | None  # None: rank unknown; a None dim: free

    @property
    def dtype(self) -> np.dtype | None:
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))
        except (KeyError, ValueError, TypeError):
            return None

    def describe(self) -> str:
        dims = "?" if self.dims is None else "x".join("?" if d is None else str(d) for d in self.dims)
        return f"'{self.name}' ({self.dtype.name if self.dtype is not None else 'unknown type'}, {dims})"


@dataclass
class IntegerHint:
    compared: list[int] = field(default_factory=list)  # constants the input is compared with
    bound: int | None = None  # indices: values stay in [0, bound)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The main graph's inputs that are not initializers (those keep their default values)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = None
        if tensor.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tensor.shape.dim
            )
        specs.append(InputSpec(value.name, tensor.elem_type, dims))
    return specs


UNNAMED = ""  # the name of a --shape given without one: the model's only input


def named_shapes(specs: list[InputSpec], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """`shapes` with an unnamed shape given to the model's only input; InputError when it has several."""
    named = dict(shapes)
    if UNNAMED not in named:
        return named
    dims = named.pop(UNNAMED)
    shown = ",".join(str(d) for d in dims)
    if len(specs) != 1:
        inputs = ", ".join(spec.name for spec in specs) or "none"
        raise InputError(
            f"--shape {shown}: a shape without a name needs a model with one input; this one has "
            f"{len(specs)} ({inputs}): write NAME:{shown}"
        )
    named.setdefault(specs[0].name, dims)
    return named


def check_user_inputs(
    specs: list[InputSpec], given: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """Refuse --inputs/--shape that do not fit the model's inputs, naming the option."""
    shapes = named_shapes(specs, shapes)
    by_name = {spec.name: spec for spec in specs}
    known = ", ".join(spec.describe() for spec in specs) or "none"
    for option, names in (("--inputs", given), ("--shape", shapes)):
        unknown = sorted(set(names) - set(by_name))
        if unknown:
            raise InputError(f"{option}: the model has no input '{unknown[0]}' (its inputs: {known})")
    for name, array in given.items():
        spec, array = by_name[name], np.asarray(array)
        if spec.dtype is not None and array.dtype != spec.dtype:
            raise InputError(f"--inputs: input {spec.describe()} takes {spec.dtype.name}, the array is {array.dtype}")
        _check_shape("--inputs", spec, tuple(array.shape))
    for name, dims in shapes.items():
        _check_shape("--shape", by_name[name], tuple(dims))


def _check_shape(option: str, spec: InputSpec, shape: tuple[int, ...]) -> None:
    shown = "x".join(str(d) for d in shape) or "a scalar"
    if spec.dims is None:
        return
    if len(shape) != len(spec.dims):
        raise InputError(f"{option}: {shown} for input {spec.describe()}, which has rank {len(spec.dims)}")
    for axis, (wanted, got) in enumerate(zip(spec.dims, shape, strict=True)):
        if wanted is not None and wanted != got:
            raise InputError(f"{option}: {shown} for input {spec.describe()}, whose axis {axis} is fixed at {wanted}")


def integer_hints(model: onnx.ModelProto) -> dict[str, IntegerHint]:
    """For every integer input: the constants it is compared with, and the bound of the axis it indexes."""
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            consumers[name].append((node, index))
    constants = _constants(model)
    shapes = _static_shapes(model)
    hints = {}
    for spec in input_specs(model):
        dtype = spec.dtype
        if dtype is None or dtype.kind not in "iu":
            continue
        hint = IntegerHint()
        pending, seen = [spec.name], {spec.name}
        while pending:
            for node, index in consumers.get(pending.pop(), []):
                _learn(node, index, hint, constants, shapes)
                if node.op_type in _FOLLOWED and index == 0:
                    pending += [name for name in node.output if name and name not in seen]
                    seen.update(node.output)
        hint.compared = sorted(set(hint.compared))[:_MAX_HINTS]
        hints[spec.name] = hint
    return hints


def _learn(node: onnx.NodeProto, index: int, hint: IntegerHint, constants, shapes) -> None:
    if node.op_type in _COMPARISONS:
        other = constants.get(node.input[1 - index]) if len(node.input) == 2 else None
        if other is not None and other.dtype.kind in "iu" and other.size <= _MAX_HINTS:
            hint.compared += [int(v) for v in other.reshape(-1)]
    elif _INDEXING.get(node.op_type) == index:
        bound = _indexed_size(node, constants, shapes)
        if bound is not None and bound > 0:
            hint.bound = bound if hint.bound is None else min(hint.bound, bound)


def _indexed_size(node: onnx.NodeProto, constants, shapes) -> int | None:
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "OneHot":
        depth = constants.get(node.input[1]) if len(node.input) > 1 else None
        return int(depth.reshape(-1)[0]) if depth is not None and depth.size else None
    shape = shapes.get(node.input[0])
    if shape is None:
        return None
    axis = 0 if node.op_type == "GatherND" else int(attributes.get("axis", 0))
    if not -len(shape) <= axis < len(shape):
        return None
    return shape[axis]


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    found = {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.data_location != TensorProto.EXTERNAL and np.prod(t.dims) <= _MAX_HINTS
    }
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            if tensor.data_location != TensorProto.EXTERNAL and np.prod(tensor.dims) <= _MAX_HINTS:
                found[node.output[0]] = numpy_helper.to_array(tensor)
    return found


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes.setdefault(value.name, tuple(d.dim_value for d in dims))
    return shapes


@dataclass
class Draws:
    """The runs the check makes: one feed per run. `batched`: one run whose samples are the two draws."""

    feeds: list[dict[str, np.ndarray]]
    batched: bool


def make_draws(
    specs: list[InputSpec],
    hints: Mapping[str, IntegerHint],
    given: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    seed: int,
    free_dim: int,
    single_run: bool,
) -> Draws:
    """Two draws; one batched run when `single_run` is allowed and every input has a free batch axis."""
    batched = (
        single_run
        and not given
        and not shapes
        and bool(specs)
        and all(spec.dims and spec.dims[0] is None for spec in specs)
    )
    batch = 1 if batched else FREE_BATCH_DIM
    draws = []
    for draw in (0, 1):
        rng = np.random.default_rng([seed, draw])
        feeds = {}
        for spec in specs:
            if spec.name in given and draw == 0:
                feeds[spec.name] = np.asarray(given[spec.name])
                continue
            shape = (
                tuple(given[spec.name].shape)
                if spec.name in given
                else tuple(shapes.get(spec.name, ())) or (_concrete(spec, batch, free_dim))
            )
            feeds[spec.name] = _values(rng, spec, shape, hints.get(spec.name), draw)
        draws.append(feeds)
    if batched:
        return Draws([{name: np.concatenate([draws[0][name], draws[1][name]]) for name in draws[0]}], True)
    return Draws(draws, False)


def _concrete(spec: InputSpec, batch: int, free_dim: int) -> tuple[int, ...]:
    if spec.dims is None:
        raise InputError(f"input {spec.describe()} has no declared shape; give it with --shape")
    return tuple(d if d is not None else (batch if axis == 0 else free_dim) for axis, d in enumerate(spec.dims))


def _values(
    rng: np.random.Generator, spec: InputSpec, shape: tuple[int, ...], hint: IntegerHint | None, draw: int
) -> np.ndarray:
    dtype = spec.dtype
    if dtype is None or dtype.kind not in "fiub":
        raise InputError(f"cannot make data for input {spec.describe()}; pass it with --inputs")
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        if not shape or int(np.prod(shape)) == 1:
            return np.full(shape, draw == 0, dtype=np.bool_)
        return np.asarray(rng.random(shape) < 0.5)
    return _integers(rng, dtype, shape, hint or IntegerHint(), draw)


def _integers(
    rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], hint: IntegerHint, draw: int
) -> np.ndarray:
    info = np.iinfo(dtype)
    if hint.bound is not None:
        low, high = 0, hint.bound
        if int(np.prod(shape)) == 1:  # a single index: the first in one draw, the last in the other
            return np.full(shape, low if draw == 0 else high - 1, dtype=dtype)
        return rng.integers(low, high, size=shape).astype(dtype)
    compared = [v for v in hint.compared if info.min <= v <= info.max]
    others = [v for v in _DEFAULT_INTEGERS if v not in compared] or [max(compared) + 1]
    if not compared:
        return rng.integers(0, len(_DEFAULT_INTEGERS), size=shape).astype(dtype)
    if int(np.prod(shape)) == 1:  # a gate: what it is compared with in draw A, something else in draw B
        return np.full(shape, compared[0] if draw == 0 else others[0], dtype=dtype)
    pool = compared if draw == 0 else others
    mixed = np.where(rng.random(shape) < 0.5, rng.choice(pool, size=shape), rng.choice(others + compared, size=shape))
    return np.asarray(mixed).astype(dtype)
