"""Both error rates of bnfold's check: tampered folds caught, correct folds passed.

For every model: fold it without the check, then
* false alarms: `bnfold.verify(original, folded)` must pass (a failure is a false alarm);
* sensitivity: scale one output channel of one folded weight by 1 + δ (δ = 1% and 0.1%; the
  channel axis of its layer: 0 for a Conv, 1 for a ConvTranspose, a MatMul or a Gemm without transB),
  or move one channel of one folded bias by δ·max|bias|, and count how often
  `verify(original, tampered)` fails. An all-zero folded tensor (ConvNeXt's zero-initialized biases
  behind its layer scale) is not tampered: scaling it, or moving it by a fraction of its largest
  value, changes nothing.

    python scripts/check_sensitivity.py [MODEL.onnx | FOLDER ...] [--trials 20] [--seed 0]

A missed tamper is also measured: how far it moves its layer's output on seeded inputs of the
check's shapes, in rounding steps of each channel's largest value (steps of float16 or bfloat16 when
the model computes in one). One that moves it by fewer than 64 steps is counted "below rounding" (a
channel whose input is dead on every draw, or values so large that the tamper is a few rounding steps
of them): no comparison at float precision can see it.

With no paths: the sample models in models/, the benchmark's whole nets (scripts/bench_models.py)
and the exporter-style transformer encoder of the tests. Paths may add any model (for example
../shared/realmodels). Prints a Markdown table: per model, the false alarms and the fraction caught.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import bnfold
from bnfold.check.float_types import has_float_type

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))


def default_models(work: Path) -> list[Path]:
    import bench_models
    from builders.transformer import transformer_encoder

    built = {
        "resnet18": bench_models.resnet18(),
        "preact_resnet": bench_models.preact_resnet(),
        "densenet121": bench_models.densenet121(),
        "mlp": bench_models.mlp(),
        "transformer_encoder": transformer_encoder(layers=4),
    }
    paths = sorted((ROOT / "models").glob("*.onnx"))
    for name, model in built.items():
        onnx.save(model, work / f"{name}.onnx")
        paths.append(work / f"{name}.onnx")
    return paths


def folded_tensors(original: onnx.ModelProto, folded: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """The folded model's float initializers a fold wrote: (weights of rank ≥ 2, biases of rank 1)."""
    before = {t.name: t for t in original.graph.initializer}
    weights, biases = [], []
    for tensor in folded.graph.initializer:
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            continue
        old = before.get(tensor.name)
        if old is not None and old.SerializeToString() == tensor.SerializeToString():
            continue
        if not tensor.dims or not np.any(numpy_helper.to_array(tensor)):  # a scalar, empty or all zero:
            continue  # scaling it, or moving it by a fraction of its largest value, changes nothing
        (weights if len(tensor.dims) >= 2 else biases).append(tensor.name)
    return weights, biases


def output_axis(model: onnx.ModelProto, name: str) -> int:
    """The axis of weight `name` that runs along its layer's output channels (Conv [Cout, …]: 0;
    ConvTranspose [Cin, Cout/g, …], MatMul [K, N] and Gemm without transB: 1)."""
    for node in model.graph.node:
        if len(node.input) > 1 and node.input[1] == name:
            if node.op_type in ("ConvTranspose", "MatMul"):
                return 1
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                return 0 if trans_b else 1
    return 0


def tampered(folded: onnx.ModelProto, name: str, delta: float, rng: np.random.Generator) -> onnx.ModelProto:
    """One output channel of a folded weight scaled by 1 + δ, or one channel of a folded bias moved by
    δ·max|bias|."""
    model = onnx.ModelProto.FromString(folded.SerializeToString())
    tensor = next(t for t in model.graph.initializer if t.name == name)
    array = numpy_helper.to_array(tensor).copy()
    if array.ndim >= 2:
        axis = output_axis(model, name)
        index = [slice(None)] * array.ndim
        index[axis] = int(rng.integers(array.shape[axis]))
        array[tuple(index)] *= 1 + delta
    else:
        channel = int(rng.integers(array.shape[0]))
        array[channel] += delta * max(float(np.max(np.abs(array))), 1e-12)
    tensor.CopyFrom(numpy_helper.from_array(array, name))
    return model


# A tamper that moves the values of its layer by fewer rounding steps than this (on the check's inputs) is
# counted apart: no comparison at float precision can tell it from a correct fold's rounding (a channel whose
# input is dead on every draw is not moved at all).
BELOW_ROUNDING_STEPS = 64


def effect_in_steps(folded: onnx.ModelProto, bad: onnx.ModelProto, name: str, shapes: dict) -> float:
    """How far the tamper moves the output of the layer holding `name`: the largest change of a channel, in
    rounding steps of that channel's largest value, on seeded inputs of the check's shapes."""
    import onnxruntime as ort

    readers = [n for n in folded.graph.node if name in n.input]
    layer = next((n for n in readers if name in list(n.input)[1:]), readers[0])
    inferred = onnx.shape_inference.infer_shapes(folded).graph
    declared = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *inferred.output)}
    element_type = declared.get(layer.output[0], onnx.TensorProto.FLOAT)
    outputs = []
    for model in (folded, bad):
        probe = onnx.ModelProto.FromString(model.SerializeToString())
        probe.graph.output.append(onnx.helper.make_tensor_value_info(layer.output[0], element_type, None))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(7)
        feeds = {
            i.name: rng.standard_normal(shapes[i.name]).astype(np.float32)
            if "float" in i.type
            else np.zeros(shapes[i.name], np.int64)
            for i in session.get_inputs()
        }
        outputs.append(session.run([layer.output[0]], feeds)[0].astype(np.float64))
    before, after = outputs
    axes = tuple(axis for axis in range(before.ndim) if axis != 1) if before.ndim >= 2 else None
    change = np.atleast_1d(np.abs(after - before).max(axis=axes))
    step = computing_epsilon(folded) * np.maximum(np.atleast_1d(np.abs(before).max(axis=axes)), 1e-30)
    return float(np.max(change / step))


def computing_epsilon(model: onnx.ModelProto) -> float:
    """The rounding step of the lowest float precision the model computes in: float16 or bfloat16 when
    its inputs, outputs or constants are of that type or it casts to one (the values a later float32 layer
    reads were rounded there)."""
    casts = {a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    for data_type, step in ((onnx.TensorProto.BFLOAT16, 2.0**-7), (onnx.TensorProto.FLOAT16, 2.0**-10)):
        if data_type in casts or has_float_type(model, data_type):
            return step
    return float(np.finfo(np.float32).eps)


def measure(path: Path, work: Path, trials: int, seed: int) -> dict:
    out = work / f"folded_{path.stem}.onnx"
    bnfold.fold_file(path, out, check=False)
    original, folded = onnx.load(path), onnx.load(out)
    row: dict = {"model": path.stem, "false_alarm": None}
    if not folded.graph.initializer or original.SerializeToString() == folded.SerializeToString():
        return row
    check = bnfold.verify(original, folded, base_dir=path.parent)
    row["false_alarm"] = check.verdict == "failed"
    row["verdict"] = check.verdict
    weights, biases = folded_tensors(original, folded)
    rng = np.random.default_rng(seed)
    for kind, names in (("weight", weights), ("bias", biases)):
        for delta in (1e-2, 1e-3):
            if not names:
                continue
            caught = below = 0
            for _ in range(trials):
                name = names[int(rng.integers(len(names)))]
                bad = tampered(folded, name, delta, rng)
                if bnfold.verify(original, bad, base_dir=path.parent).verdict == "failed":
                    caught += 1
                elif effect_in_steps(folded, bad, name, check.inputs) < BELOW_ROUNDING_STEPS:
                    below += 1
            row[f"{kind} {delta:.1%}"] = (caught, trials, below)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    columns = ["weight 1.0%", "weight 0.1%", "bias 1.0%", "bias 0.1%"]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        paths = [p for given in args.paths for p in (sorted(given.rglob("*.onnx")) if given.is_dir() else [given])]
        paths = paths or default_models(work)
        print("| model | verify(original, folded) | " + " | ".join(f"caught, {c}" for c in columns) + " |")
        print("|---" * (len(columns) + 2) + "|")
        totals = {c: [0, 0, 0] for c in columns}
        alarms = checked = 0
        for path in paths:
            try:
                row = measure(path, work, args.trials, args.seed)
            except bnfold.BnfoldError as error:
                print(f"| {path.stem} | not folded: {error} |" + " |" * len(columns))
                continue
            if row["false_alarm"] is None:
                continue
            checked += 1
            alarms += bool(row["false_alarm"])
            cells = []
            for column in columns:
                caught, trials, below = row.get(column, (0, 0, 0))
                totals[column][0] += caught
                totals[column][1] += trials
                totals[column][2] += below
                note = f" ({below} below rounding)" if below else ""
                cells.append(f"{caught}/{trials}{note}" if trials else "–")
            print(f"| {row['model']} | {row['verdict']} | " + " | ".join(cells) + " |")
        cells = [
            f"{c}/{t} ({c / t:.0%}; {c}/{t - b} = {c / max(t - b, 1):.0%} of those above rounding)" if t else "–"
            for c, t, b in totals.values()
        ]
        print(f"| **all {checked} models** | {alarms} false alarms | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
