"""Every place a BN can live: If/Loop/Scan bodies (with outer-scope weights) and local functions."""

import numpy as np
import onnx
from helpers import assert_same_outputs, bn_arrays, bn_node, fold_and_check, make_model, op_counts
from onnx import TensorProto, helper, numpy_helper

import bnfold

F32 = np.float32
FLOAT = TensorProto.FLOAT


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _all_ops(model):
    ops = [n.op_type for n in model.graph.node]
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops += [n.op_type for n in attr.g.node]
    for function in model.functions:
        ops += [n.op_type for n in function.node]
    return ops


def if_model():
    """then: Conv (weight from the outer scope) → BN (params inside); else: a standalone BN."""
    rng = np.random.default_rng(0)
    inner = bn_arrays(rng, 4, "tbn")
    then_branch = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w_outer"], ["ty"], name="then_conv", pads=[1, 1, 1, 1]),
            bn_node("ty", "t_out", "tbn", name="then_bn"),
        ],
        "then_body",
        [],
        [helper.make_tensor_value_info("t_out", FLOAT, ["N", 4, 6, 6])],
        [_init(k, v) for k, v in inner.items()],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w_outer"], ["ey"], name="else_conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["ey"], ["er"], name="else_relu"),
            bn_node("er", "e_out", "obn", name="else_bn"),
        ],  # BN params from the outer scope
        "else_body",
        [],
        [helper.make_tensor_value_info("e_out", FLOAT, ["N", 4, 6, 6])],
    )
    node = helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=then_branch, else_branch=else_branch)
    inits = {"w_outer": rng.normal(size=(4, 3, 3, 3)).astype(F32), **bn_arrays(rng, 4, "obn")}
    return make_model([node], [("cond", np.bool_, []), ("x", F32, ["N", 3, 6, 6])], [("z", F32, ["N", 4, 6, 6])], inits)


def _feeds(cond):
    return {"cond": np.array(cond), "x": np.random.default_rng(1).normal(size=(2, 3, 6, 6)).astype(F32)}


def test_bn_in_if_branches_with_outer_scope_weights_and_params():
    model = if_model()
    result = bnfold.fold(model)
    onnx.checker.check_model(result.model, full_check=True)
    for cond in (True, False):
        assert_same_outputs(model, result.model, feeds=_feeds(cond))
    records = {r.name: r for r in result.records}
    assert records["then_bn"].action == "folded" and records["then_bn"].graph == "subgraph then_body"
    assert records["else_bn"].action == "kept"  # Relu → BN → branch output: nothing to fold into
    assert _all_ops(result.model).count("BatchNormalization") == 1
    # The outer weight is used by both branches: it is never overwritten.
    outer = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    np.testing.assert_array_equal(outer["w_outer"], numpy_helper.to_array(model.graph.initializer[0]))


def loop_model():
    """A Loop whose body runs Conv → BN on the carried state; the Conv weight lives outside."""
    rng = np.random.default_rng(2)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
            helper.make_node("Conv", ["state", "w_loop"], ["conv_out"], name="loop_conv", pads=[1, 1]),
            bn_node("conv_out", "state_out", "lbn", name="loop_bn"),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state", FLOAT, ["N", 3, 8]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", FLOAT, ["N", 3, 8]),
        ],
        [_init(k, v) for k, v in bn_arrays(rng, 3, "lbn").items()],
    )
    node = helper.make_node("Loop", ["trips", "", "x"], ["z"], name="loop", body=body)
    inits = {"trips": np.array(3, np.int64), "w_loop": (rng.normal(size=(3, 3, 3)) * 0.4).astype(F32)}
    return make_model([node], [("x", F32, ["N", 3, 8])], [("z", F32, ["N", 3, 8])], inits)


def test_bn_in_loop_body_folds_into_a_conv_with_outer_weight():
    folded, records = fold_and_check(loop_model())
    assert [(r.name, r.action, r.graph) for r in records] == [("loop_bn", "folded", "subgraph loop_body")]
    assert "BatchNormalization" not in _all_ops(folded)


def scan_model():
    """Scan over [T, N, 4]: each step is MatMul (constant weight) → BN over [N, 5]."""
    rng = np.random.default_rng(3)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["step", "w_scan"], ["mm"], name="scan_mm"),
            bn_node("mm", "step_out", "sbn", name="scan_bn"),
        ],
        "scan_body",
        [helper.make_tensor_value_info("step", FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("step_out", FLOAT, ["N", 5])],
        [
            _init("w_scan", rng.normal(size=(4, 5)).astype(F32)),
            *[_init(k, v) for k, v in bn_arrays(rng, 5, "sbn").items()],
        ],
    )
    node = helper.make_node("Scan", ["xs"], ["ys"], name="scan", body=body, num_scan_inputs=1)
    return make_model([node], [("xs", F32, [6, 2, 4])], [("ys", F32, [6, 2, 5])])


def test_bn_in_scan_body_folds_into_matmul():
    folded, records = fold_and_check(scan_model())
    assert [(r.name, r.action) for r in records] == [("scan_bn", "folded")]
    assert "Gemm" in _all_ops(folded) and "BatchNormalization" not in _all_ops(folded)


def function_model():
    """A local function Conv → BN with Constant weights inside, called twice; plus one whose weight is an input."""
    rng = np.random.default_rng(4)

    def constant(name, array):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array.astype(F32), name))

    params = bn_arrays(rng, 4, "fbn")
    conv_bn = helper.make_function(
        "local",
        "ConvBn",
        ["x"],
        ["z"],
        [
            constant("w", rng.normal(size=(4, 3, 3, 3))),
            *[constant(k, v) for k, v in params.items()],
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
            bn_node("y", "z", "fbn", name="fn_bn"),
        ],
        [helper.make_opsetid("", 17)],
    )
    bn_only = helper.make_function(
        "local",
        "ConvWeightInput",
        ["x", "w"],
        ["z"],
        [
            *[constant(k, v) for k, v in bn_arrays(rng, 4, "gbn").items()],
            helper.make_node("Conv", ["x", "w"], ["y"]),
            bn_node("y", "z", "gbn", name="fn_bn_input_weight"),
        ],
        [helper.make_opsetid("", 17)],
    )
    nodes = [
        helper.make_node("ConvBn", ["x"], ["a"], domain="local", name="call1"),
        helper.make_node("ConvBn", ["x"], ["b"], domain="local", name="call2"),
        helper.make_node("ConvWeightInput", ["x", "w2"], ["c"], domain="local", name="call3"),
    ]
    model = make_model(
        nodes,
        [("x", F32, [2, 3, 6, 6])],
        [("a", F32, [2, 4, 6, 6]), ("b", F32, [2, 4, 6, 6]), ("c", F32, [2, 4, 4, 4])],
        {"w2": rng.normal(size=(4, 3, 3, 3)).astype(F32)},
        functions=[conv_bn, bn_only],
    )
    model.opset_import.append(helper.make_opsetid("local", 1))
    return model


def test_bn_in_local_functions_folds_without_inlining():
    model = function_model()
    folded, records = fold_and_check(model)
    by_name = {r.name: r for r in records}
    assert by_name["fn_bn"].action == "folded" and by_name["fn_bn"].graph == "function local::ConvBn"
    # Its weight is a function input: kept as one BN, with the reason.
    weight_input = by_name["fn_bn_input_weight"]
    assert (weight_input.action, weight_input.reason) == (
        "kept",
        "weight of Conv (unnamed) is not constant (computed at run time); its output is a graph output",
    )
    assert [f.name for f in folded.functions] == ["ConvBn", "ConvWeightInput"]
    assert op_counts(folded) == {"ConvBn": 2, "ConvWeightInput": 1}
    conv_bn = folded.functions[0]
    assert [n.op_type for n in conv_bn.node] == ["Constant", "Constant", "Conv"]
    assert [i.name for i in folded.graph.initializer] == ["w2"]  # nothing leaked into the main graph


def test_a_bn_in_a_function_whose_input_rank_is_not_fixed_stays_bn_under_mul_add():
    # The input's rank may differ from one call to the next: no [C, 1, …, 1] constant fits every call.
    record = next(
        r for r in bnfold.fold(function_model(), standalone="mul-add").records if r.name == "fn_bn_input_weight"
    )
    assert (record.action, record.reason) == (
        "kept",
        "weight of Conv (unnamed) is not constant (computed at run time); its output is a graph output; "
        "cannot rewrite it as Mul+Add: rank of the input is unknown, so the channel axis cannot be broadcast",
    )


def test_graphs_under_custom_domain_nodes_are_walked_too():
    """The walk skips standard ops whose schemas hold no graph; any other domain's node may hold one."""
    import onnx_ir as ir

    from bnfold.graph.ir_walk import subgraphs

    body = helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "body", [], [])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="plain"),
        helper.make_node("Wrap", ["r"], ["y"], domain="com.example", name="wrap", body=body),
        helper.make_node("If", ["c"], ["z"], name="branch", then_branch=body, else_branch=body),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    names = [g.name for g in subgraphs(ir.serde.deserialize_model(model).graph)]
    assert names == ["body", "body", "body"]
