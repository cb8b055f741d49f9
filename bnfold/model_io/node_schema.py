"""Nodes checked against their operator's schema while the model is validated (structure only, no data read).

A model whose nodes contradict their schema is not a model any runtime runs, and
bnfold's own reading of it would fail somewhere inside with an error that names
nothing. So, once, at the boundary (validation.py walks every node and calls `check`):

* every node's domain is one the model imports (or a model-local function's);
* every attribute a default-domain op's schema defines has the schema's type
  (a `spatial` given as a list of floats, a `group` given as a string), and the op
  has as many inputs and outputs as its schema allows;
* a BatchNormalization is well formed: the five inputs its schema takes, no attribute
  its schema (at the model's opset) does not define, and its four parameters, where
  their shapes are stated (initializers, Constant nodes), of one shape and, unless
  `spatial=0` before opset 9, vectors;
* a Conv/ConvTranspose bias, where both shapes are stated, holds one value per
  output channel.

A BN that is merely unfoldable (parameters computed at run time, training mode) is
not malformed: it is reported and left as it is.
"""

from __future__ import annotations

import onnx

from bnfold.errors import InputError

_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_BN_PARAMETERS = ("scale", "B", "input_mean", "input_var")


class NodeChecker:
    """Checks each node of one model as the validation walk meets it (`check`); raises InputError."""

    def __init__(self, proto: onnx.ModelProto, label: str, opset: int | None) -> None:
        self.label = label
        self.opset = opset
        self.domains = {o.domain for o in proto.opset_import} | _DEFAULT_DOMAINS | {f.domain for f in proto.functions}
        self.shapes: dict[str, tuple[int, ...]] = {}  # stated shapes of constants, by name
        self._schemas: dict[str, onnx.defs.OpSchema | None] = {}

    def add_constants(self, tensors) -> None:
        self.shapes.update((tensor.name, tuple(tensor.dims)) for tensor in tensors)

    def check(self, node: onnx.NodeProto) -> None:
        if not isinstance(node.op_type, str) or not isinstance(node.domain, str):
            return  # not UTF-8: validation.py refuses it with the node's other texts
        if node.domain not in self.domains:
            self._refuse(node, f"its domain '{node.domain}' is not one the model imports")
        if node.domain not in _DEFAULT_DOMAINS:
            return
        if node.op_type == "Constant" and len(node.output) == 1:
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None:
                self.shapes[node.output[0]] = tuple(value.dims)
        schema = self._schema(node.op_type)
        if schema is None:
            return
        self._attribute_types(node, schema)
        self._arity(node, schema)
        if node.op_type == "BatchNormalization":
            self._batch_norm(node, schema)
        elif node.op_type in ("Conv", "ConvTranspose"):
            self._bias(node)

    def _schema(self, op_type: str) -> onnx.defs.OpSchema | None:
        if op_type not in self._schemas:
            try:
                version = self.opset if self.opset is not None else onnx.defs.onnx_opset_version()
                self._schemas[op_type] = onnx.defs.get_schema(op_type, version, "")
            except onnx.defs.SchemaError:
                self._schemas[op_type] = None  # an op this onnx does not know: onnxruntime says what it thinks
        return self._schemas[op_type]

    def _attribute_types(self, node: onnx.NodeProto, schema: onnx.defs.OpSchema) -> None:
        for attribute in node.attribute:
            expected = schema.attributes.get(attribute.name)
            if expected is None or attribute.type == onnx.AttributeProto.UNDEFINED:
                continue
            wanted_type = _type_number(expected.type)
            if attribute.type != wanted_type:
                given = onnx.AttributeProto.AttributeType.Name(attribute.type)
                wanted = onnx.AttributeProto.AttributeType.Name(wanted_type)
                self._refuse(node, f"attribute '{attribute.name}' is {given}, its schema says {wanted}")

    def _arity(self, node: onnx.NodeProto, schema: onnx.defs.OpSchema) -> None:
        given = len(node.input)
        if not schema.min_input <= given <= schema.max_input:
            most = "" if schema.max_input == schema.min_input else f" to {schema.max_input}"
            self._refuse(node, f"it has {given} inputs; {node.op_type} takes {schema.min_input}{most}")
        if len(node.output) > schema.max_output:
            self._refuse(node, f"it has {len(node.output)} outputs; {node.op_type} has at most {schema.max_output}")

    def _batch_norm(self, node: onnx.NodeProto, schema: onnx.defs.OpSchema) -> None:
        if not all(node.input):
            self._refuse(node, f"it has {sum(bool(name) for name in node.input)} inputs; BatchNormalization takes 5")
        for attribute in node.attribute:
            if attribute.name not in schema.attributes:
                known = ", ".join(sorted(schema.attributes))
                self._refuse(node, f"unknown attribute '{attribute.name}' (opset {self.opset} defines {known})")
        shapes = [self.shapes.get(name) for name in node.input[1:5]]
        if any(shape is None for shape in shapes):
            return  # computed at run time: unfoldable, not malformed
        if len(set(shapes)) != 1:
            listed = ", ".join(f"{n} {s}" for n, s in zip(_BN_PARAMETERS, shapes, strict=True))
            self._refuse(node, f"its parameters' shapes differ ({listed})")
        spatial = next((a.i for a in node.attribute if a.name == "spatial"), 1)
        per_element = self.opset is not None and self.opset < 9 and spatial == 0
        if not per_element and len(shapes[0]) != 1:  # type: ignore[arg-type]
            self._refuse(node, f"its parameters have shape {shapes[0]}, not one value per channel")

    def _bias(self, node: onnx.NodeProto) -> None:
        if len(node.input) < 3 or not node.input[2]:
            return
        weight, bias = self.shapes.get(node.input[1]), self.shapes.get(node.input[2])
        if weight is None or bias is None or len(weight) < 3:
            return
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        channels = weight[0] if node.op_type == "Conv" else weight[1] * group
        if bias != (channels,):
            self._refuse(node, f"its bias has shape {bias}; its weight {weight} makes {channels} output channels")

    def _refuse(self, node: onnx.NodeProto, problem: str) -> None:
        name = node.name or (node.output[0] if node.output else "")
        raise InputError(f"{self.label}: {node.op_type} '{name}' is malformed: {problem}")


def _type_number(attr_type) -> int:
    """The AttributeProto type number of a schema's AttrType (a pybind enum: its stubs lack __int__)."""
    return int(attr_type.value)
