"""Cast sandwiches: a per-channel map computed in a wider float type between two Casts.

Keras's mixed_float16 policy exports every BN as

    Conv(float16) → Cast(to float32) → BN (float32) → Cast(to float16) → …

The map folds into the float16 weights (computed in float64, rounded once to
float16) and both Casts go: a float16 value widened and narrowed back is the same
value, so the only difference left is where the rounding to float16 happens. That
is not exact, so the fold stands only when the check's half-precision rule passes
against the float32 reference (api.fold_file runs the pass again without the folds
it refuses). Preconditions:

* the first Cast widens: from float16 or bfloat16 to float32 or float64, or from
  float32 to float64; the second Cast narrows back to exactly the first's source type;
* the map's output feeds only that second Cast, the first Cast's output only the way
  to the map (layout and transparent nodes between are allowed, as for any fold).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from bnfold.graph.editing import data_input, graph_of, retire_node, use_count
from bnfold.graph.node_attrs import in_default_domain, int_attr
from bnfold.graph.skip import Skip

# Every value of the key type is exactly representable in each of its wider types.
WIDER = {
    ir.DataType.FLOAT16: (ir.DataType.FLOAT, ir.DataType.DOUBLE),
    ir.DataType.BFLOAT16: (ir.DataType.FLOAT, ir.DataType.DOUBLE),
    ir.DataType.FLOAT: (ir.DataType.DOUBLE,),
}


@dataclass(frozen=True)
class Sandwich:
    widen: ir.Node  # Cast(to the wider type), before the map
    narrow: ir.Node  # Cast(back to `dtype`), after it
    dtype: ir.DataType  # the type of the weights the map folds into

    @property
    def source(self) -> ir.Value:
        """The narrow value the widening Cast reads."""
        value = self.widen.inputs[0]
        if value is None:
            raise Skip(f"{_name(self.widen)} has no input")
        return value

    @property
    def key(self) -> str:
        """What names this sandwich from one run of the pass to the next: its narrowing Cast's output."""
        return self.narrow.outputs[0].name or ""

    def describe(self) -> str:
        return f"{self.dtype.name.lower()} weights; Casts {_name(self.widen)}, {_name(self.narrow)} removed"


def find_sandwich(ctx, widen: ir.Node | None, output: ir.Value) -> Sandwich | None:
    """The sandwich around a map whose input comes from `widen` and whose output is `output`, or None.

    Raises Skip when it is one that an earlier check refused.
    """
    if widen is None or widen.op_type != "Cast" or not in_default_domain(widen) or not widen.inputs:
        return None
    source = ctx.types.dtype(widen.inputs[0])
    wide = int_attr(widen, "to", -1)
    if source is None or wide not in [t.value for t in WIDER.get(source, ())]:
        return None
    uses = list(output.uses())
    if output.is_graph_output() or len(uses) != 1 or widen.outputs[0].is_graph_output():
        return None
    narrow = uses[0].node
    if narrow.op_type != "Cast" or not in_default_domain(narrow) or int_attr(narrow, "to", -1) != source.value:
        return None
    if use_count(widen.outputs[0]) != 1:
        raise Skip(f"output of {_name(widen)} is used elsewhere too")
    sandwich = Sandwich(widen, narrow, source)
    refusal = ctx.refused.get(sandwich.key)
    if refusal is not None:
        raise Skip(refusal)
    return sandwich


def set_path_dtype(sandwich: Sandwich, values: list[ir.Value]) -> None:
    """Type the values between the Casts as the narrow type they carry once the Casts are gone."""
    for value in values:
        if value.type is not None:
            value.type = ir.TensorType(sandwich.dtype)


def remove_widening(sandwich: Sandwich) -> None:
    """Its consumers read the narrow value itself."""
    widen = sandwich.widen
    widen.outputs[0].replace_all_uses_with(sandwich.source)
    graph_of(widen).remove(widen, safe=True)


def remove_narrowing(sandwich: Sandwich) -> ir.Value:
    """The value before the narrowing Cast takes its place (name, consumers, type); returns it."""
    data = data_input(sandwich.narrow)
    retire_node(sandwich.narrow, data)
    return data


def _name(node: ir.Node) -> str:
    return f"'{node.name}'" if node.name else "(unnamed)"
