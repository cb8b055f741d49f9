"""Benchmark bnfold as a whole process against the floor (a process that only loads and saves).

    python scripts/bench.py                          # sample + ~100 MB (inline and external) + 5,000 layers
    python scripts/bench.py --big                    # also the 2.5 GiB external-data model
    python scripts/bench.py --runs 7 --markdown bench.md
    python scripts/bench.py --models my.onnx ...     # your own models too
    python scripts/bench.py --inference [MODEL ...]  # onnxruntime latency, original vs folded

For every model, `--runs` paired runs (floor then bnfold, alternating) of whole
processes; each row shows medians of wall time and of peak resident memory (from
the child's rusage), and the ratios to the floor. bnfold runs with `--no-check`;
the check's cost is timed separately (`bnfold` with the check, minus without).
Where installed, onnxruntime's offline optimizer, onnxslim, onnxsim and
onnxscript's optimizer are timed on the same models (as processes too).

`--inference` measures what the folded model costs at inference instead: the
original and the folded model (bnfold's default; `--forms bn,mul-add` adds the
Mul+Add form) run on onnxruntime's CPU provider, one thread, at ORT_DISABLE_ALL
and ORT_ENABLE_ALL, in interleaved runs (the order alternates), over several rounds of
fresh sessions, medians. The original saved again to another file is timed alongside
as a control: content-identical files differ by a few percent on one machine (where
their buffers land), and "noise" says by how much for each model. Without
MODEL arguments it runs the sample models in models/ and the ResNet-18,
pre-activation ResNet, DenseNet-121 and MLP built by scripts/bench_models.py.
Generated models go to --workdir (default: a temp folder), never into the repo.

"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnfold.proto_walk import proto_tensors

ROOT = Path(__file__).resolve().parent.parent

FLOOR = """
import sys, onnx
src, dst, external = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
model = onnx.load(src)
if external:
    onnx.save(model, dst, save_as_external_data=True, location=dst.rsplit("/", 1)[-1] + ".data")
else:
    onnx.save(model, dst)
"""

OTHER_TOOLS = {
    "onnxruntime (offline, BASIC)": (
        "onnxruntime",
        """
import sys, onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
options.optimized_model_filepath = sys.argv[2]
if sys.argv[3] == "1":
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     sys.argv[2].rsplit("/", 1)[-1] + ".data")
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
""",
    ),
    "onnxslim": (
        "onnxslim",
        """
import sys, onnxslim
onnxslim.slim(sys.argv[1], sys.argv[2])
""",
    ),
    "onnxsim": (
        "onnxsim",
        """
import sys, onnx, onnxsim
model, ok = onnxsim.simplify(onnx.load(sys.argv[1]))
onnx.save(model, sys.argv[2], save_as_external_data=sys.argv[3] == "1")
""",
    ),
    "onnxscript optimizer": (
        "onnxscript",
        """
import sys, onnx_ir as ir, onnxscript.optimizer as opt
model = ir.load(sys.argv[1])
opt.optimize_ir(model)
ir.save(model, sys.argv[2], external_data=(sys.argv[2].rsplit("/", 1)[-1] + ".data") if sys.argv[3] == "1" else None)
""",
    ),
}


# --- models --------------------------------------------------------------------------------------

BN_PARAMS = ("scale", "bias", "mean", "var")


def layer_nodes(i: int, x: str, pad: int) -> list[onnx.NodeProto]:
    """Conv → BN → ReLU number i, reading `x`, writing f"r{i}"."""
    return [
        helper.make_node("Conv", [x, f"conv{i}.weight"], [f"c{i}"], name=f"conv{i}", pads=[pad] * 4),
        helper.make_node("BatchNormalization", [f"c{i}"] + [f"bn{i}.{n}" for n in BN_PARAMS], [f"b{i}"], name=f"bn{i}"),
        helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}"),
    ]


def bn_values(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    values = (
        rng.uniform(0.5, 1.5, channels),
        rng.normal(0, 0.1, channels),
        rng.normal(0, 0.1, channels),
        rng.uniform(0.5, 1.5, channels),
    )
    return {name: v.astype(np.float32) for name, v in zip(BN_PARAMS, values, strict=True)}


def stack_model(nodes, inits, channels: int, output: str) -> onnx.ModelProto:
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, 8, 8]) for name in ("input", output)]
    model = helper.make_model(
        helper.make_graph(nodes, "stack", io[:1], io[1:], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


def conv_bn_stack(layers: int, channels: int, kernel: int, seed: int = 0) -> onnx.ModelProto:
    """layers × (Conv(channels → channels, kernel×kernel, pad) + BN + ReLU), random weights and statistics."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    for i in range(layers):
        w = rng.standard_normal((channels, channels, kernel, kernel), dtype=np.float32)
        w *= np.float32(1.0 / np.sqrt(channels * kernel * kernel))
        inits.append(numpy_helper.from_array(w, f"conv{i}.weight"))
        inits += [numpy_helper.from_array(v, f"bn{i}.{n}") for n, v in bn_values(rng, channels).items()]
        nodes += layer_nodes(i, "input" if i == 0 else f"r{i - 1}", kernel // 2)
    return stack_model(nodes, inits, channels, f"r{layers - 1}")


def write_inline(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def write_external(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean(path)  # onnx.save appends to an existing data file
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    return path


def write_big_external(path: Path, target_bytes: int) -> Path:
    """A Conv(256→256, 3×3)+BN+ReLU stack of `target_bytes`, its data written layer by layer (bounded memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = max(1, target_bytes // (256 * 256 * 9 * 4))
    data_path = path.with_name(path.name + ".data")
    rng = np.random.default_rng(0)
    nodes, inits, offset = [], [], 0
    with open(data_path, "wb") as data:
        for i in range(layers):
            tensors = {
                f"conv{i}.weight": rng.standard_normal((256, 256, 3, 3), dtype=np.float32) * np.float32(0.02),
                **{f"bn{i}.{n}": v for n, v in bn_values(rng, 256).items()},
            }
            for name, array in tensors.items():
                raw = array.tobytes()
                data.write(raw)
                inits.append(_external_tensor(name, array, data_path.name, offset, len(raw)))
                offset += len(raw)
            nodes += layer_nodes(i, "input" if i == 0 else f"r{i - 1}", 1)
    onnx.save(stack_model(nodes, inits, 256, f"r{layers - 1}"), path)
    return path


def _external_tensor(name: str, array: np.ndarray, location: str, offset: int, length: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def model_bytes(path: Path) -> int:
    return path.stat().st_size + sum(data.stat().st_size for data in data_files(path))


# --- measuring -------------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    peak_mib: float
    ok: bool


# A forked child's peak RSS starts at its parent's: measure through a small launcher
# process, so the benchmark's own memory (generated models) does not count.
LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(f"{time.perf_counter() - start} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run_process(argv: list[str], expect_failure: bool = False) -> Sample:
    """One whole process: its wall time and its own peak resident set (from wait4's rusage)."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        process = subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, report.name, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        seconds, max_rss_kib, code = report.read().split()
    ok = int(code) == 0
    if ok == expect_failure:
        print(
            f"  ! {' '.join(argv[:4])}… exited {code}: {process.stderr.decode(errors='replace').strip()[-300:]}",
            file=sys.stderr,
        )
    return Sample(float(seconds), int(max_rss_kib) / 1024, ok)


def bnfold_argv(src: Path, dst: Path, check: bool) -> list[str]:
    return [sys.executable, "-m", "bnfold", str(src), str(dst), "--quiet"] + ([] if check else ["--no-check"])


def data_files(dst: Path) -> list[Path]:
    """The data files written beside `dst`: OUT.<token>.data (bnfold) or OUT.data (the floor, other tools)."""
    return [p for p in dst.parent.glob(dst.name + "*.data") if p.is_file()]


def clean(dst: Path) -> None:
    for path in (dst, *data_files(dst)):
        if path.exists():
            path.unlink()


def compile_bytecode() -> None:
    """Compile bnfold's modules once, as installing a package does (an editable install
    under PYTHONDONTWRITEBYTECODE would otherwise recompile them in every timed run)."""
    import compileall

    compileall.compile_dir(str(ROOT / "bnfold"), quiet=1)


def paired(src: Path, out_dir: Path, external: bool, runs: int) -> dict[str, list[Sample]]:
    """Floor and bnfold --no-check alternately, `runs` times each, after one untimed pair (warm caches)."""
    results: dict[str, list[Sample]] = {"floor": [], "bnfold": []}
    for run in range(runs + 1):
        for label in ("floor", "bnfold"):
            dst = out_dir / f"{label}.onnx"
            clean(dst)
            argv = (
                [sys.executable, "-c", FLOOR, str(src), str(dst), "1" if external else "0"]
                if label == "floor"
                else bnfold_argv(src, dst, check=False)
            )
            sample = run_process(argv)
            if run > 0:
                results[label].append(sample)
            elif label == "bnfold":
                check_output(dst)
            clean(dst)
    return results


def check_output(path: Path) -> None:
    """The output must load from its own folder: every external tensor in `path`.data, and onnx's checker passes."""
    proto = onnx.load(path, load_external_data=False)
    found = data_files(path)
    data = found[0] if found else path.with_name(path.name + ".data")
    size = data.stat().st_size if data.exists() else 0
    for tensor in proto_tensors(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        if info["location"] != data.name or int(info.get("offset", 0)) + int(info["length"]) > size:
            raise SystemExit(f"{path}: tensor '{tensor.name}' does not read from its own data file")
    onnx.checker.check_model(str(path))


def median(samples: list[Sample], field: str) -> float:
    return statistics.median(getattr(s, field) for s in samples)


# --- inference ------------------------------------------------------------------------------------

LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL")
# Each timed sample repeats one session's inference until it lasts about this long: short, so that the
# sessions alternate often and none of them keeps its weights warm in the cache longer than the others.
SAMPLE_SECONDS = 0.005


def inference_session(path: Path, level: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def inference_feeds(session, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in spec.shape]
        feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def interleaved_ms(make_sessions, feeds: dict, runs: int, rounds: int) -> dict[str, float]:
    """Median milliseconds per inference of each session, over `rounds` sets of fresh sessions.

    Two sessions of one model differ by a few percent (where their buffers land in
    memory), so each round creates new sessions; within a round they are timed in
    turns whose order alternates, so a drift of the machine hits all of them alike.
    """
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        sessions = make_sessions()
        for session in sessions.values():
            session.run(None, feeds)  # warm-up
        first = next(iter(sessions.values()))
        start = time.perf_counter()
        first.run(None, feeds)
        repeats = max(1, int(SAMPLE_SECONDS / max(time.perf_counter() - start, 1e-6)))
        order = list(sessions)
        for run in range(runs):
            for label in order if run % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                for _ in range(repeats):
                    sessions[label].run(None, feeds)
                samples.setdefault(label, []).append((time.perf_counter() - start) / repeats * 1e3)
    return {label: statistics.median(values) for label, values in samples.items()}


def inference_models(paths: list[Path], work: Path) -> list[tuple[str, Path, int]]:
    """(label, path, batch) for the given models, or the samples and the built whole-net models."""
    if paths:
        return [(p.name, p, 1) for p in paths]
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_models import BATCH, BUILDERS

    models = [(p.name, p, 1) for p in sorted((ROOT / "models").glob("*.onnx"))]
    for name in ("resnet18", "preact_resnet", "densenet121", "mlp"):
        build = BUILDERS[name]
        path = work / f"{name}.onnx"
        onnx.save(build(), path)
        models.append((name, path, BATCH[name]))
    return models


def node_count(path: Path) -> tuple[int, int]:
    graph = onnx.load(path, load_external_data=False).graph
    return len(graph.node), sum(node.op_type == "BatchNormalization" for node in graph.node)


INFERENCE_HEADER = (
    "| model | form | nodes | BN | DISABLE_ALL original ms | folded ms | ratio | noise "
    "| ENABLE_ALL original ms | folded ms | ratio | noise |"
)


def inference_row(label: str, path: Path, batch: int, form: str, runs: int, rounds: int, work: Path) -> str:
    import bnfold

    folded = work / f"inference_{label}_{form}.onnx"
    bnfold.fold_file(path, folded, standalone=form)  # checked: a wrong fold would stop here
    (nodes_before, bn_before), (nodes_after, bn_after) = node_count(path), node_count(folded)
    cells = [label, form, f"{nodes_before} → {nodes_after}", f"{bn_before} → {bn_after}"]
    # The control is the original saved again to another file: the same model, but its own file and sessions.
    # How far it lands from the original is what this machine's noise is for this model.
    control = work / f"inference_{label}_control.onnx"
    onnx.save(onnx.load(path), control)
    for level in LEVELS:

        def make_sessions(level: str = level) -> dict:
            return {
                "original": inference_session(path, level),
                "folded": inference_session(folded, level),
                "control": inference_session(control, level),
            }

        feeds = inference_feeds(inference_session(path, level), batch)
        ms = interleaved_ms(make_sessions, feeds, runs, rounds)
        cells += [
            f"{ms['original']:.3f}",
            f"{ms['folded']:.3f}",
            f"{ms['folded'] / ms['original']:.3f}",
            f"±{abs(ms['control'] / ms['original'] - 1) * 100:.1f}%",
        ]
    return "| " + " | ".join(cells) + " |"


def bench_inference(paths: list[Path], forms: list[str], runs: int, rounds: int, work: Path) -> list[str]:
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{versions()}; onnxruntime CPU, 1 thread; per model and level {rounds} rounds of fresh sessions, "
        f"{runs} interleaved samples each; medians.",
        "",
        INFERENCE_HEADER,
        "|---" * 12 + "|",
    ]
    print("\n".join(lines), flush=True)
    for label, path, batch in inference_models(paths, work):
        for form in forms:
            lines.append(inference_row(label, path, batch, form, runs, rounds, work))
            print(lines[-1], flush=True)
    return lines


# --- the cost of the check ------------------------------------------------------------------------

CHECK_HEADER = (
    "| model | size | onnxruntime offline BASIC s | bnfold (fold + check) s | ratio | bnfold peak MiB "
    "| peak / model size |"
)


def bench_check(label: str, src: Path, external: bool, runs: int, work: Path) -> str:
    """bnfold's default run (fold + check + write) against onnxruntime's own offline BASIC optimization."""
    out_dir = work / f"check_{label.replace(' ', '_')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    ort_script = OTHER_TOOLS["onnxruntime (offline, BASIC)"][1]
    ours, theirs = [], []
    for run in range(runs + 1):
        for label_, samples in (("ort", theirs), ("bnfold", ours)):
            dst = out_dir / f"{label_}.onnx"
            clean(dst)
            argv = (
                [sys.executable, "-c", ort_script, str(src), str(dst), "1" if external else "0"]
                if label_ == "ort"
                else [sys.executable, "-m", "bnfold", str(src), str(dst), "--quiet"]
            )
            sample = run_process(argv)
            if run > 0:
                samples.append(sample)
            clean(dst)
    size = model_bytes(src) / 2**20
    peak = median(ours, "peak_mib")
    return (
        f"| {label} | {size:,.0f} MiB | {median(theirs, 'seconds'):.2f} | {median(ours, 'seconds'):.2f} | "
        f"{median(ours, 'seconds') / median(theirs, 'seconds'):.2f}× | {peak:,.0f} | {peak / size:.2f}× |"
    )


# --- the table -------------------------------------------------------------------------------------

HEADER = (
    "| model | size | floor wall s | bnfold wall s | wall ratio | floor peak MiB | bnfold peak MiB "
    "| peak ratio | check s |"
)


def bench_model(label: str, src: Path, external: bool, runs: int, work: Path, with_check: bool) -> str:
    out_dir = work / f"out_{label}"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = paired(src, out_dir, external, runs)
    floor_s, ours_s = median(results["floor"], "seconds"), median(results["bnfold"], "seconds")
    floor_m, ours_m = median(results["floor"], "peak_mib"), median(results["bnfold"], "peak_mib")
    check = "–"
    if with_check:
        dst = out_dir / "checked.onnx"
        checked = [run_process(bnfold_argv(src, dst, check=True)) for _ in range(max(1, runs // 2))]
        clean(dst)
        check = f"{statistics.median(s.seconds for s in checked) - ours_s:.2f}"
    size = model_bytes(src) / 2**20
    return (
        f"| {label} | {size:,.0f} MiB | {floor_s:.2f} | {ours_s:.2f} | {ours_s / floor_s:.2f}× | "
        f"{floor_m:,.0f} | {ours_m:,.0f} | {ours_m / floor_m:.2f}× | {check} |"
    )


def bench_tools(label: str, src: Path, external: bool, work: Path, runs: int) -> list[str]:
    rows = []
    for tool, (module, script) in OTHER_TOOLS.items():
        if importlib.util.find_spec(module) is None:
            continue
        dst = work / f"out_{label}" / "tool.onnx"
        samples = []
        for _ in range(runs):
            clean(dst)
            samples.append(run_process([sys.executable, "-c", script, str(src), str(dst), "1" if external else "0"]))
        clean(dst)
        ok = all(s.ok for s in samples)
        rows.append(
            f"| {label} | {tool} | {median(samples, 'seconds'):.2f} | {median(samples, 'peak_mib'):,.0f} | "
            f"{'ok' if ok else 'failed'} |"
        )
    return rows


def startup_row() -> str:
    helps = [run_process([sys.executable, "-m", "bnfold", "--help"]) for _ in range(5)]
    errors = [
        run_process([sys.executable, "-m", "bnfold", "/nonexistent.onnx", "/tmp/x.onnx"], expect_failure=True)
        for _ in range(5)
    ]
    return (
        f"`bnfold --help`: {statistics.median(s.seconds for s in helps):.2f} s; "
        f"an error path (missing input): {statistics.median(s.seconds for s in errors):.2f} s (medians of 5)"
    )


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("onnx", "onnx-ir", "onnxruntime", "numpy", "typer"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{package} {version(package)}")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="paired runs per model (medians are reported)")
    parser.add_argument("--big", action="store_true", help="also the 2.5 GiB external-data model")
    parser.add_argument("--skip-100mb", action="store_true")
    parser.add_argument("--models", nargs="*", default=[], type=Path, help="more models to time")
    parser.add_argument("--no-tools", action="store_true", help="do not time other optimizers")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--inference",
        nargs="*",
        type=Path,
        default=None,
        metavar="MODEL",
        help="onnxruntime latency of original vs folded (the samples and built nets if no MODEL)",
    )
    parser.add_argument("--forms", default="bn", help="with --inference: standalone forms, e.g. bn,mul-add")
    parser.add_argument("--rounds", type=int, default=8, help="with --inference: sets of fresh sessions per level")
    parser.add_argument("--samples", type=int, default=30, help="with --inference: timed samples per session and round")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bnfold-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.inference is not None:
        lines = bench_inference(args.inference, args.forms.split(","), args.samples, args.rounds, work)
        if args.markdown:
            args.markdown.write_text("\n".join(lines) + "\n")
        return
    compile_bytecode()

    models: list[tuple[str, Path, bool, bool]] = [("sample_cnn", ROOT / "models" / "sample_cnn.onnx", False, True)]
    if not args.skip_100mb:
        stack = conv_bn_stack(42, 256, 3)  # 42 × 2.25 MiB ≈ 95 MiB
        models.append(("stack 100 MB inline", write_inline(stack, work / "stack100.onnx"), False, True))
        external = write_external(stack, work / "stack100_ext" / "model.onnx")
        models.append(("stack 100 MB external", external, True, True))
        del stack
    for layers in (1250, 2500, 5000):  # folding time should grow linearly with the number of BNs
        path = write_inline(conv_bn_stack(layers, 4, 1), work / f"layers{layers}.onnx")
        models.append((f"{layers:,} Conv+BN layers", path, False, False))
    if args.big:
        big = write_big_external(work / "big" / "model.onnx", int(2.5 * 2**30))
        models.append(("stack 2.5 GiB external", big, True, False))
    models += [(p.name, p, p.with_name(p.name + ".data").exists(), True) for p in args.models]

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{versions()}; {args.runs} paired runs, medians.",
        "",
        HEADER,
        "|---" * 9 + "|",
    ]
    print("\n".join(lines), flush=True)
    for label, path, external, with_check in models:
        row = bench_model(label, path, external, args.runs, work, with_check)
        lines.append(row)
        print(row, flush=True)
    lines += ["", startup_row()]
    print(lines[-1], flush=True)
    check_models = []
    if not args.skip_100mb:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_models import resnet50

        check_models.append(("ResNet-50 100 MB inline", write_inline(resnet50(), work / "resnet50.onnx"), False))
    if args.big:
        check_models.append(("stack 2.5 GiB external", big, True))
    if check_models:
        lines += ["", CHECK_HEADER, "|---" * 7 + "|"]
        print("\n".join(lines[-3:]), flush=True)
        for label, path, external in check_models:
            lines.append(bench_check(label, path, external, args.runs, work))
            print(lines[-1], flush=True)
    if not args.no_tools:
        tool_rows = []
        for label, path, external, _ in models:
            if label.startswith("stack 100 MB"):
                tool_rows += bench_tools(label, path, external, work, max(1, args.runs // 2))
        if tool_rows:
            lines += ["", "| model | other tool | wall s | peak MiB | result |", "|---|---|---|---|---|", *tool_rows]
            print("\n".join(lines[-len(tool_rows) - 2 :]), flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
