"""fp16, bf16, fp64 and mixed-precision models fold, pass the full checker, and are checked."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLE
from helpers import assert_sample_folded, bn_arrays, bn_node, fold_and_check, make_model
from onnx import TensorProto, helper

import bnfold
from bnfold.check.comparison import compare_value as compare_output
from bnfold.check.float_types import convert_float_type
from bnfold.folding import fold_math

FLOAT = frozenset({TensorProto.FLOAT})
TYPES = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16, "float64": TensorProto.DOUBLE}


def sample_as(dtype_name, tmp_path) -> Path:
    path = tmp_path / f"sample_{dtype_name}.onnx"
    model = convert_float_type(onnx.load(SAMPLE), FLOAT, TYPES[dtype_name])
    if dtype_name == "bfloat16":
        model.opset_import[0].version = 22  # Conv and ConvTranspose take bfloat16 from opset 22
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("dtype_name", "note"),
    [
        ("float16", "vs float32 run of the original"),
        ("bfloat16", "both models run converted to float32"),
        ("float64", "both models run converted to float32"),
    ],
)
def test_sample_model_folds_in_every_float_type(dtype_name, note, tmp_path):
    out = tmp_path / "out.onnx"
    report = bnfold.fold_file(sample_as(dtype_name, tmp_path), out)
    assert report.check.passed and note in report.check.outputs[0].note
    folded = onnx.load(out)
    onnx.checker.check_model(folded, full_check=True)
    assert_sample_folded(folded)
    float_types = {t.data_type for t in folded.graph.initializer if t.data_type != TensorProto.INT64}
    assert float_types == {TYPES[dtype_name]}


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float64"])
def test_a_wrong_fold_is_caught_in_every_float_type(dtype_name, tmp_path, monkeypatch):
    original = fold_math.fold_output_channels

    def wrong(weight, bias, scale, shift, **kwargs):
        new_weight, new_bias = original(weight, bias, scale, shift, **kwargs)
        return new_weight * 1.05, new_bias

    monkeypatch.setattr(fold_math, "fold_output_channels", wrong)
    out = tmp_path / "out.onnx"
    with pytest.raises(bnfold.CheckFailedError, match="check failed at BatchNormalization bn"):
        bnfold.fold_file(sample_as(dtype_name, tmp_path), out, strict=True)
    assert not out.exists()
    report = bnfold.fold_file(sample_as(dtype_name, tmp_path), out)  # by default the wrong folds are backed out
    assert report.backed_out and all(
        r.action == "skipped" and r.reason.startswith("fails the check at ")
        for r in report.records
        if r.name in report.backed_out
    )


def test_mixed_precision_standalone_bn15_gets_constants_in_the_data_type():
    rng = np.random.default_rng(0)
    model = make_model(
        [bn_node("x", "z")],
        [("x", np.float16, ["N", 3, 4, 4])],
        [("z", np.float16, None)],
        bn_arrays(rng, 3, dtype=np.float32),
        opset=15,
    )
    folded, records = fold_and_check(model, rtol=8e-3, standalone="mul-add")
    assert records[0].action == "converted"
    assert {t.data_type for t in folded.graph.initializer} == {TensorProto.FLOAT16}


def test_mixed_precision_gemm_bn15_keeps_the_weight_type():
    rng = np.random.default_rng(1)
    inits = {"B": rng.normal(size=(4, 5)).astype(np.float16), **bn_arrays(rng, 5, dtype=np.float32)}
    model = make_model(
        [helper.make_node("Gemm", ["A", "B"], ["y"], name="gemm"), bn_node("y", "z")],
        [("A", np.float16, [3, 4])],
        [("z", np.float16, [3, 5])],
        inits,
        opset=15,
    )
    folded, records = fold_and_check(model, rtol=8e-3)
    assert records[0].action == "folded"
    assert {t.data_type for t in folded.graph.initializer} == {TensorProto.FLOAT16}


def test_half_precision_comparison_against_the_float32_reference():
    reference = np.array([1.0, -2.0, 3.0])
    original = np.array([1.001, -2.0, 3.0], np.float16)
    close = np.array([1.0, -2.002, 3.0], np.float16)
    assert compare_output("y", original, close, reference=reference).passed
    far = np.array([1.0, -2.0, 3.05], np.float16)
    check = compare_output("y", original, far, reference=reference)
    assert not check.passed and "vs float32 run of the original" in check.note
