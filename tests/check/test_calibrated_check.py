"""No wrong fold, and a check calibrated to the computation (issue 19).

Every fold here is judged by an independent onnxruntime comparison (helpers.assert_same_outputs),
never by bnfold's own check alone; the check is tested both ways: correct folds pass, tampered
folds fail.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders.transformer import transformer_encoder
from conftest import SAMPLE
from helpers import assert_never_costlier, assert_same_outputs, bn_arrays, bn_node, make_model, op_counts, spoil
from onnx import helper, numpy_helper

import bnfold

F32 = np.float32


def test_a_bias_add_read_by_others_is_not_folded_through():
    # GELU after a rank-3 Linear: the bias Add's output feeds both Div(√2) and the Mul(x, ·).
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.normal(0, 0.5, (8, 8)).astype(F32),
        "b": rng.normal(0, 0.5, 8).astype(F32),
        "sqrt2": np.array(np.sqrt(2), F32),
        "one": np.array(1, F32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b"], ["h"], name="bias"),
        helper.make_node("Div", ["h", "sqrt2"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["p"], name="plus"),
        helper.make_node("Mul", ["h", "p"], ["y"], name="mul"),
    ]
    model = make_model(nodes, [("x", F32, [2, 3, 8])], [("y", F32, [2, 3, 8])], inits)
    result = bnfold.fold(model, check=False)
    assert op_counts(result.model)["Div"] == 1
    assert_same_outputs(model, result.model)
    assert not any(r.name == "div" and r.action == "folded" for r in result.records)


@pytest.mark.parametrize("seed", range(8))
def test_random_transformer_encoders_fold_right(seed):
    rng = np.random.default_rng(seed)
    model = transformer_encoder(
        layers=int(rng.integers(1, 4)),
        width=int(rng.choice([16, 32])),
        heads=int(rng.choice([1, 2, 4])),
        seed=seed,
        in_bias=str(rng.choice(["zero", "random"])),
        scaled_ffn=bool(rng.integers(2)),
    )
    onnx.checker.check_model(model, full_check=True)
    unchecked = bnfold.fold(model, check=False)
    assert_same_outputs(model, unchecked.model)
    assert_never_costlier(model, unchecked.model)  # onnxruntime's optimizer loses no fusion either (issue 20)
    checked = bnfold.fold(model)
    assert not checked.backed_out
    assert checked.check is None or checked.check.verdict == "passed"


def test_the_api_checks_by_default_and_says_when_it_cannot():
    model = onnx.load(SAMPLE)
    assert bnfold.fold(model).check.verdict == "passed"
    assert bnfold.fold(model, check=False).check is None
    rng = np.random.default_rng(1)
    inits = {"w": rng.normal(size=(4, 3, 1, 1)).astype(F32), **bn_arrays(rng, 4)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        bn_node("c", "b"),
        helper.make_node("Unknown", ["b"], ["y"], name="custom", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", 1, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", 1, None)],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    custom = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    result = bnfold.fold(custom)
    assert result.check is None and result.check_note.startswith("not checked: onnxruntime cannot run the original")


def _folded_sample(tmp_path):
    out = tmp_path / "folded.onnx"
    bnfold.fold_file(SAMPLE, out, check=False)
    return onnx.load(SAMPLE), onnx.load(out)


@pytest.mark.parametrize("factor", [1.01, 1.001, 0.999])
def test_a_tamper_of_one_channel_of_one_folded_weight_fails(tmp_path, factor):
    original, folded = _folded_sample(tmp_path)
    assert bnfold.verify(original, folded).verdict == "passed"
    before = {t.name: t.SerializeToString() for t in original.graph.initializer}
    changed = [
        t.name for t in folded.graph.initializer if len(t.dims) == 4 and before.get(t.name) != t.SerializeToString()
    ]
    assert changed
    for name in changed:
        for channel in (0, 1):
            result = bnfold.verify(original, spoil(folded, name, channel, factor))
            assert result.verdict == "failed", (name, channel)
            failure = result.first_failure()
            assert failure.noise is not None and failure.needed_atol > 0


def test_a_site_without_evidence_is_inconclusive_not_failed(tmp_path):
    original, folded = _folded_sample(tmp_path)
    nan = np.full((2, 3, 16, 16), np.nan, F32)
    result = bnfold.verify(original, folded, inputs={"image": nan})
    assert result.verdict == "inconclusive"
    assert all(site.passed and not site.informative for site in result.sites)


def test_the_default_epsilon_is_the_float32_attribute_value():
    # ONNX's default ε is the float attribute 1e-5, i.e. 9.99999974738e-06: a float64 fold must use that.
    rng = np.random.default_rng(2)
    inits = {"w": rng.normal(size=(4, 5)), **bn_arrays(rng, 5, dtype=np.float64)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), bn_node("m", "y")]
    model = make_model(nodes, [("x", np.float64, [3, 4])], [("y", np.float64, None)], inits)
    result = bnfold.fold(model)
    assert not result.backed_out and result.check.verdict == "passed"
    assert_same_outputs(model, result.model, rtol=1e-14)


def test_a_scalar_constant_is_nudged_too():
    # A 0-d constant (PP-OCR's DB head scales by one) came back from numpy as a scalar, the noise run failed
    # and the fixed tolerances judged: a correct fold before a Sigmoid failed them (PP-OCRv4 detector).
    rng = np.random.default_rng(3)
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), "k": np.array(3.0, F32), **bn_arrays(rng, 4)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        bn_node("c", "b"),
        helper.make_node("Mul", ["b", "k"], ["m"], name="gain"),
        helper.make_node("Sigmoid", ["m"], ["y"], name="sigmoid"),
    ]
    model = make_model(nodes, [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 4, 6, 6])], inits)
    result = bnfold.fold(model)
    assert result.check.verdict == "passed" and not result.backed_out
    assert all(check.noise is not None for check in [*result.check.sites, *result.check.outputs])


def test_dead_channels_whose_constants_cancel_pass():
    # A channel the Conv never feeds (zero weights) is BN's constant β − μ·s; with β ≈ μ·s it is tiny, and the
    # four nudged parameters, each moving it by one ulp of β, can cancel exactly: no measured noise there.
    rng = np.random.default_rng(4)
    channels = 64
    weight = rng.normal(size=(channels, 3, 3, 3)).astype(F32)
    weight[16:] = 0
    params = bn_arrays(rng, channels)
    scale = params["bn.scale"] / np.sqrt(params["bn.var"] + np.float32(1e-5))
    params["bn.bias"] = (params["bn.mean"] * scale * (1 + 1e-3)).astype(F32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn_node("c", "y")]
    model = make_model(nodes, [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, channels, 6, 6])], {"w": weight, **params})
    result = bnfold.fold(model)
    assert result.check.verdict == "passed" and not result.backed_out
    assert_same_outputs(model, result.model)


def _concat_of_forward_folds() -> onnx.ModelProto:
    """Xception's pattern (tf2onnx): BNs fold forward into two Convs whose outputs a Concat joins, and the BN after
    the Concat folds back per slice into the same Convs: their outputs then hold the later BN's values."""
    rng = np.random.default_rng(3)
    inits = {**bn_arrays(rng, 8, "f1"), **bn_arrays(rng, 8, "f2"), **bn_arrays(rng, 16, "cat")}
    inits.update({f"w{k}": rng.normal(0, 0.3, (8, 8, k, k)).astype(F32) for k in (1, 3)})
    inits.update({f"b{k}": rng.normal(0, 1, 8).astype(F32) for k in (1, 3)})
    nodes = [
        bn_node("x", "x1", "f1", name="bn_f1"),
        bn_node("x", "x2", "f2", name="bn_f2"),
        helper.make_node("Conv", ["x1", "w1", "b1"], ["conv1"], name="conv1"),
        helper.make_node("Conv", ["x2", "w3", "b3"], ["conv2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["conv1", "conv2"], ["cat"], axis=1),
        bn_node("cat", "bn_cat", "cat", name="bn_cat"),
        helper.make_node("Relu", ["bn_cat"], ["y"]),
    ]
    return make_model(nodes, [("x", F32, ["N", 8, 10, 10])], [("y", F32, ["N", 16, 10, 10])], inits)


def test_a_concat_of_forward_folds_is_compared_where_the_map_went(tmp_path):
    original = _concat_of_forward_folds()
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(original, source)
    result = bnfold.fold_file(source, out)
    assert result.check is not None and result.check.verdict == "passed"
    assert not result.backed_out
    assert {r.name: r.action for r in result.records if r.op == "BatchNormalization"}["bn_cat"] == "folded"
    assert "conv1" not in {site.name for site in result.check.sites}
    folded = onnx.load(out)
    assert_same_outputs(original, folded)
    verified = bnfold.verify(original, folded)
    assert verified.verdict == "passed"
    assert {site.name for site in verified.sites} == {site.name for site in result.check.sites}


# --- the white-noise measurement (nudge.perturb_layer_inputs, with_white_noise): only when a site fails ---------


def test_white_rounding_noise_is_one_half_step_per_element_seeded_and_moving_on():
    from bnfold.check.models import Source
    from bnfold.check.noise import perturb_layer_inputs

    model = onnx.load(SAMPLE)
    layers = [
        n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")
    ]
    feeds = {"image": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(F32)}
    plain = Source(model, None).session().run(feeds)
    edited = onnx.ModelProto.FromString(model.SerializeToString())
    perturb_layer_inputs(edited.graph, seed=0)
    assert sum(n.op_type == "RandomUniformLike" for n in edited.graph.node) == len(layers)
    first, second = (Source(model, None).session([], [], lambda g: perturb_layer_inputs(g, 0)) for _ in range(2))
    runs = [first.run(feeds) for _ in range(2)]
    again = second.run(feeds)
    (name,) = plain
    assert not np.array_equal(runs[0][name], runs[1][name])  # the generator moves on from run to run
    assert np.array_equal(runs[0][name], again[name])  # and is seeded: a new session repeats it
    assert np.max(np.abs(runs[0][name] - plain[name])) <= 1e-4 * np.max(np.abs(plain[name]))


def test_farthest_takes_each_element_from_the_run_farthest_from_the_plain_one():
    from bnfold.check.noise import farthest

    plain = [{"v": np.array([1.0, 1.0, 1.0], F32)}]
    one = [{"v": np.array([1.5, 1.0, 0.9], F32)}]
    two = [{"v": np.array([1.1, 0.2, 1.0], F32)}]
    np.testing.assert_array_equal(farthest(plain, [one, two])[0]["v"], np.array([1.5, 0.2, 0.9], F32))


def test_the_white_noise_runs_only_when_a_site_fails_and_a_tamper_still_fails(tmp_path, monkeypatch):
    import bnfold.check.equivalence as equivalence

    calls = []
    real = equivalence.with_white_noise
    monkeypatch.setattr(equivalence, "with_white_noise", lambda *a, **k: calls.append(1) or real(*a, **k))
    original, folded = _folded_sample(tmp_path)
    assert bnfold.verify(original, folded).verdict == "passed" and not calls
    before = {t.name: t.SerializeToString() for t in original.graph.initializer}
    weight = next(
        t.name for t in folded.graph.initializer if len(t.dims) == 4 and before.get(t.name) != t.SerializeToString()
    )
    assert bnfold.verify(original, spoil(folded, weight, 0, 1.01)).verdict == "failed"
    assert calls == [1]
