"""The equivalence check proves what it says: every site compared per channel, a verdict that says
"inconclusive" when the evidence is missing, inputs that reach what the model compares them with.

The corruption tests fold a model correctly, then spoil one value of the folded model by hand, and
assert that `verify` fails and names the site (and the BN) where the damage is.
"""

import numpy as np
import onnx
import pytest
from conftest import SAMPLE, invoke
from helpers import bn_arrays, bn_node, make_model, spoil
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.check.comparison import Tolerance, compare_value
from bnfold.report import Site

F32 = np.float32


def conv_bn_relu(channel_scales=(1.0, 1.0, 1.0, 1.0)):
    """x → Conv → BN → Relu; the BN's γ sets each channel's scale."""
    rng = np.random.default_rng(0)
    params = bn_arrays(rng, 4)
    params["bn.scale"] = np.asarray(channel_scales, F32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        bn_node("c", "y"),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), "b": rng.normal(size=4).astype(F32), **params}
    return make_model(nodes, [("x", F32, ["N", 3, 8, 8])], [("z", F32, None)], inits)


def test_a_correct_fold_passes_with_every_site_compared():
    model = conv_bn_relu()
    check = bnfold.verify(model, bnfold.fold(model).model)
    assert check.verdict == "passed" and check.passed
    assert [(s.name, s.bn, s.informative, s.passed) for s in check.sites] == [("y", "bn", True, True)]
    assert check.outputs[0].name == "z" and check.outputs[0].informative


def test_a_fold_wrong_only_in_a_small_channel_fails_at_its_site():
    """Channel 3 is 1e-6 of channel 0: 50% wrong there moves the output by far less than rtol·max|output|."""
    model = conv_bn_relu(channel_scales=(1e3, 1.0, 1.0, 1e-3))
    folded = bnfold.fold(model).model
    weight = next(n for n in folded.graph.node if n.op_type == "Conv").input[1]
    check = bnfold.verify(model, spoil(folded, weight, 3, 1.5))
    assert check.verdict == "failed"
    failure = check.first_failure()
    assert (failure.name, failure.bn, failure.channel) == ("y", "bn", 3)
    assert failure.max_rel_err > 0.01 and failure.value_rel_err < 1e-5  # 3% of its own values, 1e-6 of the largest


def test_a_per_channel_comparison_holds_each_channel_to_its_own_scale():
    expected = np.array([[1e3, 1e-3], [-1e3, 2e-3]], F32)  # channel 1 is a millionth of channel 0
    wrong = expected.copy()
    wrong[:, 1] *= 1.5
    check = compare_value("v", expected, wrong)
    assert not check.passed and check.channel == 1 and check.max_rel_err == pytest.approx(0.5)
    noise = expected.copy()
    noise[:, 0] += np.float32(1e-3)  # a millionth of channel 0: rounding
    assert compare_value("v", expected, noise).passed
    assert compare_value("v", expected, wrong, Tolerance(rtol=1.0)).passed  # the tolerances can be overridden


def test_the_first_diverging_bn_is_named_in_the_cli_message(tmp_path):

    model = conv_bn_relu()
    original, spoiled = tmp_path / "original.onnx", tmp_path / "spoiled.onnx"
    onnx.save(model, original)
    folded = bnfold.fold(model).model
    onnx.save(spoil(folded, next(n for n in folded.graph.node if n.op_type == "Conv").input[1], 0, 2.0), spoiled)
    check = bnfold.verify(original, spoiled)
    assert check.failed and check.first_failure().name == "y"
    result = invoke(original, tmp_path / "out.onnx")
    assert result.exit_code == 0 and "check: passed (1 outputs, 1 sites;" in result.stderr


def gated_model():
    """z = Where(Equal(k, 7), BN(Conv(x)), Conv(x)): the BN reaches the output only when the integer k is 7."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),  # so that the BN cannot fold into the Conv
        bn_node("c", "y"),
        helper.make_node("Equal", ["k", "seven"], ["gate"], name="equal"),
        helper.make_node("Where", ["gate", "y", "r"], ["z"], name="where"),
    ]
    inits = {"w": rng.normal(size=(4, 3, 1, 1)).astype(F32), "seven": np.array(7, np.int64), **bn_arrays(rng, 4)}
    return make_model(nodes, [("x", F32, ["N", 3, 4, 4]), ("k", np.int64, [])], [("z", F32, None)], inits)


def test_integer_inputs_reach_the_constants_they_are_compared_with():
    from bnfold.check.inputs import input_specs, integer_hints, make_draws

    model = gated_model()
    specs = input_specs(model)
    draws = make_draws(specs, integer_hints(model), {}, {}, seed=0, free_dim=16, single_run=True)
    assert not draws.batched  # a scalar input: its two draws are two runs
    assert [int(feed["k"]) for feed in draws.feeds] == [7, 0]


def test_a_spoiled_gated_branch_is_caught_at_the_output_too():
    model = gated_model()
    folded = bnfold.fold(model, standalone="mul-add").model  # the BN becomes Mul+Add: the gated value changes
    mul = next(n for n in folded.graph.node if n.op_type == "Mul")
    check = bnfold.verify(model, spoil(folded, mul.input[1], 0, 1.5))
    assert check.failed
    assert not check.outputs[0].passed  # draw A opened the gate (k = 7)


def test_scalar_bool_inputs_take_both_values():
    from bnfold.check.inputs import input_specs, make_draws

    model = make_model([helper.make_node("Not", ["flag"], ["z"])], [("flag", np.bool_, [])], [("z", np.bool_, [])])
    draws = make_draws(input_specs(model), {}, {}, {}, seed=0, free_dim=16, single_run=True)
    assert [bool(feed["flag"]) for feed in draws.feeds] == [True, False]
    assert all(isinstance(feed["flag"], np.ndarray) for feed in draws.feeds)


def constant_model(make_nan=False):
    """The input never reaches the BN: its value is the same for every draw (or NaN)."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Mul", ["x", "zero"], ["nothing"], name="ignore_input"),
        helper.make_node("Conv", ["nothing", "w", "b"], ["c"], name="conv"),
        bn_node("c", "y"),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    inits = {
        "zero": np.array(np.nan if make_nan else 0.0, F32),
        "w": rng.normal(size=(4, 3, 1, 1)).astype(F32),
        "b": rng.normal(size=4).astype(F32),
        **bn_arrays(rng, 4),
    }
    return make_model(nodes, [("x", F32, ["N", 3, 4, 4])], [("z", F32, None)], inits)


@pytest.mark.parametrize("make_nan", [False, True], ids=["constant", "nan"])
def test_no_evidence_is_inconclusive_never_passed(tmp_path, make_nan):
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(constant_model(make_nan), source)
    report = bnfold.fold_file(source, out)
    assert report.check.verdict == "inconclusive" and not report.check.passed and not report.check.failed
    assert [(s.name, s.informative, s.passed) for s in report.check.sites] == [("y", False, True)]
    assert out.exists()  # written: nothing differed
    strict = tmp_path / "strict.onnx"
    with pytest.raises(bnfold.CheckFailedError, match="check inconclusive"):
        bnfold.fold_file(source, strict, strict=True)
    assert not strict.exists()


def test_inconclusive_is_printed_and_strict_exits_1(tmp_path):

    source = tmp_path / "in.onnx"
    onnx.save(constant_model(), source)
    result = invoke(source, tmp_path / "out.onnx")
    assert result.exit_code == 0 and "check: INCONCLUSIVE" in result.stderr
    strict = invoke(source, tmp_path / "strict.onnx", "--strict")
    assert strict.exit_code == 1 and not (tmp_path / "strict.onnx").exists()
    assert "bnfold: error: check inconclusive" in strict.stderr


def if_model(condition_from_input):
    """If(cond, then: x + 1, else: BN(Conv(x))): the fold changes the else branch only."""
    rng = np.random.default_rng(3)
    then_branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["t"], name="then_conv")],
        "then_body",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["e"], name="else_conv"), bn_node("e", "e_out", name="else_bn")],
        "else_body",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
    )
    nodes = (
        []
        if condition_from_input
        else [helper.make_node("Constant", [], ["cond"], name="always", value=numpy_helper.from_array(np.array(True)))]
    )
    nodes.append(
        helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=then_branch, else_branch=else_branch)
    )
    inputs = [("x", F32, ["N", 3, 4, 4])] + ([("cond", np.bool_, [])] if condition_from_input else [])
    inits = {"w": rng.normal(size=(4, 3, 1, 1)).astype(F32), **bn_arrays(rng, 4)}
    return make_model(nodes, inputs, [("z", F32, ["N", 4, 4, 4])], inits)


def test_a_branch_the_inputs_take_is_compared():
    model = if_model(condition_from_input=True)
    result = bnfold.fold(model)
    check = bnfold.verify(model, result.model)
    assert check.verdict == "passed"
    assert [(s.name, s.bn, s.exercised, s.informative) for s in check.sites] == [("z", "else_bn", True, True)]


def test_a_branch_never_taken_is_listed_as_not_exercised(tmp_path):
    source = tmp_path / "in.onnx"
    onnx.save(if_model(condition_from_input=False), source)
    report = bnfold.fold_file(source, tmp_path / "out.onnx")
    site = report.check.sites[0]
    assert (site.name, site.exercised, site.informative, site.passed) == ("z", False, False, True)
    assert report.check.verdict == "inconclusive"
    assert next(r for r in report.records if r.name == "else_bn").site == "z"


def test_verify_finds_the_sites_the_pass_reports():
    from bnfold.folding.fold_pass import run_pass
    from bnfold.model_io.ir_convert import to_ir

    model = onnx.load(SAMPLE)
    folded, _, sites, _ = run_pass(to_ir(model, "sample"))
    from bnfold.model_io.ir_convert import to_proto

    found = bnfold.verify(model, to_proto(folded)).sites
    assert {s.name for s in found} == {s.name for s in sites}
    assert all(isinstance(site, Site) for site in sites)


@pytest.mark.parametrize("spoiled", [False, True])
def test_verify_alone_compares_a_fold_through_layout_nodes_where_the_bn_was(spoiled):
    """jax2onnx's Gemm → Reshape → Transpose → BN → Transpose: the BN's map moves into the Gemm, whose output
    now holds other values; verify without the pass's sites compares at the BN's place, and still catches a
    wrong weight there."""
    from builders.exporters import flax_linear_rank3

    model = flax_linear_rank3()
    folded = bnfold.fold(model).model
    if spoiled:
        gemm = next(n for n in folded.graph.node if n.op_type == "Gemm")
        folded = spoil(folded, gemm.input[1], 0, 1.01)  # row 0 of B: input feature 0, in every channel
    check = bnfold.verify(model, folded)
    assert "gemm_output_0" not in {site.name for site in check.sites}
    assert check.verdict == ("failed" if spoiled else "passed")
    if spoiled:
        assert check.first_failure().name == "BatchNormOut_0"


@pytest.mark.parametrize("spoiled", [False, True])
@pytest.mark.parametrize("pattern", ["layer scale", "LinearNorm", "LinearNorm with bias"])
def test_verify_alone_skips_a_value_whose_map_came_back_through_a_bias_add_or_past_a_shape(pattern, spoiled):
    """ConvNeXt's MatMul → Add(bias) → Mul(γ): γ goes into the MatMul and its bias, so both their outputs hold
    other values; TorchScript LeViT's MatMul output also feeds a Shape, which reads no value. verify without the
    pass compared them under their old names and failed correct folds; it compares where the map was, and still
    catches a wrong weight there."""
    from builders.exporters import convnext_layer_scale, levit_linear_norm_torchscript

    model = {
        "layer scale": convnext_layer_scale,
        "LinearNorm": levit_linear_norm_torchscript,
        "LinearNorm with bias": lambda: levit_linear_norm_torchscript(bias=True),
    }[pattern]()
    folded = bnfold.fold(model).model
    assert len(folded.graph.node) < len(model.graph.node)
    matmul = next(n for n in folded.graph.node if n.op_type == "MatMul")
    if spoiled:
        folded = spoil(folded, matmul.input[1], 0, 1.01, axis=1)  # output feature 0
    check = bnfold.verify(model, folded)
    assert not {"m", "h", "t"} & {site.name for site in check.sites}
    assert check.verdict == ("failed" if spoiled else "passed"), check


def test_free_dimensions_are_retried_larger_when_onnxruntime_rejects_them(tmp_path):
    """Five valid stride-2 convolutions need H, W ≥ 63: 16 and 32 fail, 64 works."""
    rng = np.random.default_rng(4)
    nodes, current, inits = [], "x", {}
    for i in range(5):
        inits[f"w{i}"] = (rng.normal(size=(3, 3, 3, 3)) * 0.3).astype(F32)
        nodes.append(helper.make_node("Conv", [current, f"w{i}"], [f"c{i}"], name=f"conv{i}", strides=[2, 2]))
        current = f"c{i}"
    inits.update(bn_arrays(rng, 3))
    nodes.append(bn_node(current, "z"))
    model = make_model(nodes, [("x", F32, ["N", 3, "H", "W"])], [("z", F32, None)], inits)
    source = tmp_path / "fcn.onnx"
    onnx.save(model, source)
    report = bnfold.fold_file(source, tmp_path / "out.onnx")
    assert report.check.passed and report.check.inputs == {"x": [2, 3, 64, 64]}


def test_verify_refuses_a_missing_file_as_input_error(tmp_path):
    with pytest.raises(bnfold.InputError, match="no such file"):
        bnfold.verify(tmp_path / "missing.onnx", conv_bn_relu())
