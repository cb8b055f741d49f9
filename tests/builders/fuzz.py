"""A seeded mutation fuzzer for bnfold's command-line contract (issue 21).

Each mutant is one of a few small edge-case models with 1-3 mutations, half of them gentle
(BN values and ε, renamed tensors, input shapes: many such mutants still fold), half
hostile (attributes: type, value, added, removed; node inputs; initializer shapes and
element types; names; opsets and IR versions; external-data references; domains and op
types), then sometimes flipped bytes or truncation. `run_mutant` folds it with the CLI (in this process) and returns what
broke the contract, or nothing:

* the exit code is 0, 1 or 2;
* exit 2 prints one line, `bnfold: error: ...`; no traceback, no "internal error", no
  warning (numpy's, onnxruntime's), ever;
* after a refusal no output is left (nor anything staged beside it), and the input is
  never modified;
* on exit 0 the output loads in onnxruntime and computes what the input computes,
  wherever the input runs; where it does not, only a byte-for-byte copy may be written.

    tests/cli/test_fuzz.py      a few hundred mutants in the normal test run
    scripts/fuzz.py N       thousands (`python scripts/fuzz.py 2000`)
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from conftest import invoke, snapshot
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
TIME_LIMIT_SECONDS = 60  # a mutant that takes longer is a hang


def seed_models() -> dict[str, onnx.ModelProto]:
    """The models the mutants start from: the sample CNN, and small graphs of the other shapes bnfold folds."""
    rng = np.random.default_rng(0)

    def bn(prefix: str, channels: int) -> list[onnx.TensorProto]:
        values = (rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.2, channels), rng.normal(0, 0.2, channels))
        arrays = (*values, rng.uniform(0.5, 1.5, channels))
        return [
            numpy_helper.from_array(a.astype(np.float32), f"{prefix}.{k}") for a, k in zip(arrays, "sbmv", strict=True)
        ]

    gemm = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("BatchNormalization", ["h", "bn.s", "bn.b", "bn.m", "bn.v"], ["y"], name="bn"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "w"), *bn("bn", 4)],
    )
    forward = helper.make_graph(
        [
            helper.make_node(
                "BatchNormalization", ["x", "bn.s", "bn.b", "bn.m", "bn.v"], ["n"], name="bn", epsilon=1e-3
            ),
            helper.make_node("Conv", ["n", "w", "c"], ["y"], name="conv", group=1),
        ],
        "forward",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 6, 6])],
        [
            numpy_helper.from_array(rng.normal(size=(5, 3, 1, 1)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "c"),
            *bn("bn", 3),
        ],
    )
    legacy = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "bn.s", "bn.b", "bn.m", "bn.v"], ["y"], name="bn", spatial=1)],
        "legacy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 4])],
        bn("bn", 3),
    )
    models = {"sample": onnx.load(ROOT / "models" / "sample_cnn.onnx")}
    for name, graph, opset in (("mlp", gemm, 17), ("forward", forward, 13), ("legacy", legacy, 7)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 7
        models[name] = model
    return models


# --- mutations: each changes a copy of the model in place ----------------------------------------------


def _node(model: onnx.ModelProto, rng: random.Random) -> onnx.NodeProto:
    return rng.choice(list(model.graph.node))


def _attribute(model, rng):
    node = _node(model, rng)
    name = rng.choice([a.name for a in node.attribute] + ["spatial", "epsilon", "group", "bogus", "axis"])
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    value = rng.choice([rng.randint(-3, 9), rng.uniform(-1, 1), [1.0, 2.0], [0, 1, 2], "x", b"\xff", 1e30])
    if rng.random() < 0.8:
        node.attribute.append(helper.make_attribute(name, value))


def _inputs(model, rng):
    node = _node(model, rng)
    choice = rng.randrange(4)
    if choice == 0 and node.input:
        del node.input[rng.randrange(len(node.input))]
    elif choice == 1:
        node.input.append(rng.choice([*node.input, "nowhere", ""]))
    elif choice == 2 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(["nowhere", "", model.graph.input[0].name])
    else:
        node.output[0] = rng.choice([model.graph.input[0].name, "", node.output[0] + "_x"])


def _initializer(model, rng) -> onnx.TensorProto | None:
    return rng.choice(list(model.graph.initializer)) if model.graph.initializer else None


def _shape(model, rng):
    tensor = _initializer(model, rng)
    if tensor is not None:
        dims = list(tensor.dims)
        options = [[*dims, 1], dims[:-1], [0], [-1], [max(1, d - 1) for d in dims], [d * 2 for d in dims]]
        del tensor.dims[:]
        tensor.dims.extend(rng.choice(options))


def _dtype(model, rng):
    tensor = _initializer(model, rng)
    if tensor is not None:
        tensor.data_type = rng.choice([1, 2, 6, 7, 8, 9, 10, 11, 16, 17, 99, 0])


def _bn_values(model, rng):
    names = [name for n in model.graph.node if n.op_type == "BatchNormalization" for name in n.input[1:]]
    tensors = [
        t
        for t in model.graph.initializer
        if t.name in names and t.data_type == TensorProto.FLOAT and t.data_location != TensorProto.EXTERNAL
    ]
    if tensors:
        tensor = rng.choice(tensors)
        try:
            array = numpy_helper.to_array(tensor).copy()
        except Exception:  # noqa: BLE001 - an earlier mutation made it unreadable
            return
        if array.size:
            array.flat[rng.randrange(array.size)] = rng.choice([np.nan, np.inf, -1.0, 0.0, 1e38, -1e-45])
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def _names(model, rng):
    node = _node(model, rng)
    other = _node(model, rng)
    choice = rng.randrange(3)
    if choice == 0:
        node.name = other.name
    elif choice == 1 and node.output and other.output:
        node.output[0] = other.output[0]
    else:
        model.graph.output[0].name = rng.choice(["", "nowhere", model.graph.input[0].name])


def _versions(model, rng):
    if rng.random() < 0.5:
        model.opset_import[0].version = rng.choice([1, 6, 7, 8, 9, 13, 14, 15, 21, 22, 99])
    else:
        model.ir_version = rng.choice([0, 1, 3, 4, 7, 10, 13, 99])


def _external(model, rng):
    tensor = _initializer(model, rng)
    if tensor is None:
        return
    location = rng.choice(["../up.bin", "/etc/passwd", "a\x00b", "missing.bin", "data.bin", "C:x", "data.bin/.."])
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    entries = {"location": location, "offset": rng.choice(["0", "4", "-8", "x", "99999"])}
    if rng.random() < 0.5:
        entries["length"] = rng.choice(["4", "0", "-1", "100000"])
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)


def _domain(model, rng):
    node = _node(model, rng)
    if rng.random() < 0.5:
        node.domain = rng.choice(["custom", "ai.onnx.ml", "com.microsoft"])
    else:
        node.op_type = rng.choice(["Bogus", "BatchNormalization", "Conv", "Identity", "Relu"])


def _epsilon(model, rng):
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and rng.random() < 0.5:
            kept = [a for a in node.attribute if a.name != "epsilon"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("epsilon", rng.choice([0.0, 1e-12, 1e-3, 10.0, -1.0]))])


def _rename(model, rng):
    """A tensor renamed everywhere it appears, to an unusual but valid name."""
    tensor = _initializer(model, rng)
    if tensor is None:
        return
    old, new = tensor.name, rng.choice(["weight ñ", "a/b:0", "x" * 300, "0", "onnx::Conv_1"])
    tensor.name = new
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def _input_shape(model, rng):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if dims:
        dim = dims[rng.randrange(len(dims))]
        if rng.random() < 0.5:
            dim.dim_param = rng.choice(["N", "batch", "?"])
        else:
            dim.dim_value = rng.choice([1, 2, 3, 7])


GENTLE: tuple[Callable, ...] = (_bn_values, _epsilon, _rename, _input_shape)
HOSTILE: tuple[Callable, ...] = (_attribute, _inputs, _shape, _dtype, _names, _versions, _external, _domain)
MUTATIONS = GENTLE + HOSTILE


def mutant(seed: int, models: dict[str, onnx.ModelProto]) -> tuple[str, bytes]:
    """(what was done, the mutant's bytes) for `seed`."""
    rng = random.Random(seed)
    base = rng.choice(sorted(models))
    model = onnx.ModelProto.FromString(models[base].SerializeToString())
    done = [base]
    for _ in range(rng.randint(1, 3)):
        mutation = rng.choice(GENTLE if rng.random() < 0.5 else HOSTILE)
        mutation(model, rng)
        done.append(mutation.__name__.strip("_"))
    data = model.SerializeToString()
    if rng.random() < 0.15:
        raw = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        data, done = bytes(raw), [*done, "bytes"]
    if rng.random() < 0.05:
        data, done = data[: rng.randrange(len(data))], [*done, "truncated"]
    return "+".join(done), data


# --- running one and judging it ----------------------------------------------------------------------------


def _session(data: str):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _outputs(session, seed: int) -> list[np.ndarray] | None:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in session.get_inputs():
        if spec.type != "tensor(float)":
            return None
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in spec.shape]
        feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    try:
        return session.run(None, feeds)
    except Exception:  # noqa: BLE001 - the input does not run: nothing to compare
        return None


def _same(expected: list[np.ndarray], actual: list[np.ndarray]) -> bool:
    for a, b in zip(expected, actual, strict=True):
        if a.shape != b.shape or not np.isfinite(a).all():
            return a.shape == b.shape and np.array_equal(np.isfinite(a), np.isfinite(b))
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        if not np.allclose(a, b, rtol=1e-3, atol=1e-4 * scale + 1e-6):
            return False
    return True


def _on_alarm(signum, frame):
    raise TimeoutError("hang")


def run_mutant(folder: Path, seed: int, models: dict[str, onnx.ModelProto]) -> tuple[int | None, str | None]:
    """Fold mutant `seed` in `folder` (made empty first): (its exit code, what broke the contract or None)."""
    done, data = mutant(seed, models)
    for leftover in folder.iterdir():
        leftover.unlink()
    source, output = folder / "in.onnx", folder / "out.onnx"
    source.write_bytes(data)
    (folder / "data.bin").write_bytes(bytes(64))
    before = snapshot(folder)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(TIME_LIMIT_SECONDS)
    try:
        result = invoke(source, output, "-q")
    except TimeoutError:
        return None, f"{seed} {done}: hang"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return result.exit_code, _judged(seed, done, result, folder, before, data)


def _judged(seed: int, done: str, result, folder: Path, before: dict, data: bytes) -> str | None:
    where = f"{seed} {done}"
    stderr = result.stderr
    if result.exit_code not in (0, 1, 2):
        return f"{where}: exit {result.exit_code}: {result.exception!r} {stderr[-300:]}"
    if "Traceback" in stderr or "internal error" in stderr or "Warning" in stderr:
        return f"{where}: {stderr.strip()[-300:]}"
    after = snapshot(folder)
    if {name: after.get(name) for name in before} != before:
        return f"{where}: the input changed"
    output = folder / "out.onnx"
    if result.exit_code != 0:
        lines = stderr.strip().splitlines()
        if result.exit_code == 2 and (len(lines) != 1 or not lines[0].startswith("bnfold: error: ")):
            return f"{where}: exit 2 but stderr is {stderr.strip()[:300]!r}"
        if set(after) - set(before):
            return f"{where}: left {sorted(set(after) - set(before))} after exit {result.exit_code}"
        return None
    return _judged_output(where, folder / "in.onnx", output)


def _judged_output(where: str, source: Path, output: Path) -> str | None:
    written, data = output.read_bytes(), source.read_bytes()
    try:
        expected_session = _session(str(source))  # by path: its external data is found beside it
    except Exception:  # noqa: BLE001 - the input does not load: only a copy of it may have been written
        return None if written == data else f"{where}: exit 0 changed a model onnxruntime does not load"
    try:
        actual_session = _session(str(output))
    except Exception as error:  # noqa: BLE001
        return f"{where}: exit 0 but onnxruntime does not load the output: {str(error)[:200]}"
    expected = _outputs(expected_session, 0)
    if expected is None:
        return None
    actual = _outputs(actual_session, 0)
    if actual is None or not _same(expected, actual):
        return f"{where}: exit 0 but the output computes something else"
    return None
