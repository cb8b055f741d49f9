"""Malformed input is exit 2 with its reason, never an internal error or a hollow pass (issue 21).

The four internal errors a fuzzer found, the classes behind them (nodes against their operator's schema,
tensors against their declared type, path strings before any filesystem call), a BN broken where bnfold
looks even when nothing else would fold, and a check that can never say `passed` on a model onnxruntime
cannot load.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders.external import external_model
from conftest import SAMPLE, refuse
from helpers import bn_arrays, bn_node, make_model
from onnx import TensorProto, helper, numpy_helper

import bnfold

F32 = np.float32


def _save(tmp_path: Path, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _lone_bn(opset: int = 17, params=None, **attrs) -> onnx.ModelProto:
    """A BN with nothing to fold into: nothing else in the model would change."""
    rng = np.random.default_rng(0)
    arrays = {**bn_arrays(rng, 3), **(params or {})}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), bn_node("r", "y", **attrs)]
    return make_model(nodes, [("x", F32, [2, 3, 4, 4])], [("y", F32, [2, 3, 4, 4])], arrays, opset=opset)


# --- the four internal errors, each now one line and exit 2 ---------------------------------------------------


def test_a_nul_byte_in_an_external_data_location(tmp_path):
    refuse(tmp_path, external_model(tmp_path / "m", "weights\x00.bin"), "holds a control character")


def test_a_bn_spatial_attribute_given_as_floats(tmp_path):
    model = _lone_bn(opset=7)
    model.graph.node[1].attribute.append(helper.make_attribute("spatial", [1.0, 2.0]))
    refuse(tmp_path, _save(tmp_path, model), "attribute 'spatial' is FLOATS, its schema says INT")


def test_a_bn_parameter_whose_type_says_string_with_float_bytes(tmp_path):
    model = _lone_bn()
    next(t for t in model.graph.initializer if t.name == "bn.scale").data_type = TensorProto.STRING
    refuse(tmp_path, _save(tmp_path, model), "tensor 'bn.scale' of strings keeps raw bytes")


def test_an_empty_conv_bias_under_a_bn_folded_forward(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {**bn_arrays(rng, 4), "w": rng.normal(size=(8, 4, 1, 1)).astype(F32), "b": np.zeros(0, F32)}
    nodes = [bn_node("x", "n"), helper.make_node("Conv", ["n", "w", "b"], ["y"], name="conv")]
    model = make_model(nodes, [("x", F32, [1, 4, 5, 5])], [("y", F32, [1, 8, 5, 5])], arrays)
    refuse(tmp_path, _save(tmp_path, model), "Conv 'conv' is malformed: its bias has shape (0,)")


# --- a BN broken where bnfold looks is invalid input, even when nothing else would fold ----------------------


def _four_inputs():
    model = _lone_bn()
    del model.graph.node[1].input[4]
    return model


def _unknown_attribute():
    model = _lone_bn()
    model.graph.node[1].attribute.append(helper.make_attribute("bogus", 1))
    return model


def _unimported_domain():
    model = _lone_bn()
    model.graph.node[1].domain = "custom.bn"
    return model


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_four_inputs, "it has 4 inputs; BatchNormalization takes 5"),
        (_unknown_attribute, "unknown attribute 'bogus'"),
        (_unimported_domain, "its domain 'custom.bn' is not one the model imports"),
        (lambda: _lone_bn(params={"bn.mean": np.zeros(2, F32)}), "its parameters' shapes differ"),
        (
            lambda: _lone_bn(params={k: np.ones((3, 1), F32) for k in ("bn.scale", "bn.bias", "bn.mean", "bn.var")}),
            "not one value per channel",
        ),
    ],
)
def test_a_malformed_bn_is_refused_with_its_reason(tmp_path, make, message):
    line = refuse(tmp_path, _save(tmp_path, make()), message)
    assert "is malformed" in line
    with pytest.raises(bnfold.InputError, match="is malformed"):
        bnfold.fold(make())


def test_a_merely_unfoldable_bn_is_still_copied_byte_for_byte(tmp_path):
    model = _lone_bn(training_mode=1)
    source = _save(tmp_path, model)
    out = tmp_path / "out.onnx"
    result = bnfold.fold_file(source, out)
    assert result.unchanged and out.read_bytes() == source.read_bytes()


# --- no hollow pass ----------------------------------------------------------------------------------------------


def _conv_bn(weight_dtype) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), bn_node("c", "y")]
    arrays = {**bn_arrays(rng, 4), "w": rng.normal(size=(4, 3, 3, 3)).astype(weight_dtype)}
    return make_model(nodes, [("x", F32, [1, 3, 5, 5])], [("y", F32, [1, 4, 5, 5])], arrays)


def test_types_that_contradict_each_other_are_refused_not_checked_as_float32(tmp_path):
    # a float16 weight on a float32 input: onnxruntime lacks no kernel, the model is invalid
    source = _save(tmp_path, _conv_bn(np.float16))
    refuse(tmp_path, source, "bound to different types")
    with pytest.raises(bnfold.BnfoldError):
        bnfold.verify(source, source)


def test_the_float32_stand_in_never_passes_a_folded_model_that_does_not_load(tmp_path):
    # float64 Conv: onnxruntime has no kernel, so both models are checked as float32 copies; the folded one
    # must still load as it is
    model = onnx.ModelProto.FromString(_conv_bn(np.float64).SerializeToString())
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for tensor in model.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
    folded = bnfold.fold(model).model
    assert bnfold.verify(model, folded).verdict == "passed"
    broken = onnx.ModelProto.FromString(folded.SerializeToString())
    weight = next(t for t in broken.graph.initializer if len(t.dims) == 4)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight).astype(np.float16), weight.name))
    result = bnfold.verify(model, broken)
    assert result.verdict == "failed"
    assert "cannot load the folded model" in (result.outputs[0].note or "")


def test_numpy_warns_of_nothing_it_computes_for_the_check_or_the_rounding():
    # the issue's two warnings: a cast of NaN (a mutated parameter) and a difference of values near float32's
    # largest; the fuzzer asserts that no "Warning" reaches the CLI's stderr over its mutants
    from bnfold.check.comparison import compare_value
    from bnfold.folding.fold_math import FoldOverflowError, round_to

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FoldOverflowError):
            round_to(np.array([np.nan, 1e300]), np.dtype(np.float32))
        round_to(np.array([np.nan, 1.0]), np.dtype(np.int64))
        huge = np.array([[3e38, -3e38]], F32)
        assert not compare_value("y", huge, -huge).passed


def test_sample_still_folds():
    assert bnfold.fold(onnx.load(SAMPLE)).check.verdict == "passed"
