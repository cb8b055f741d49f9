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
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from bench_inference import bench_inference
from bench_models import resnet50
from bench_process import (
    ROOT,
    bnfold_argv,
    clean,
    compile_bytecode,
    median,
    model_bytes,
    paired,
    run_process,
    versions,
)
from bench_scaling import LAYERS, profile_rows, scaling_rows
from bench_stacks import conv_bn_stack, write_big_external, write_external, write_inline

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


# --- measuring -------------------------------------------------------------------------------------


# --- inference ------------------------------------------------------------------------------------


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


def main() -> None:
    args = _arguments()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bnfold-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.inference is not None:
        lines = bench_inference(args.inference, args.forms.split(","), args.samples, args.rounds, work)
    else:
        compile_bytecode()
        lines = _whole_runs(args, work)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="paired runs per model (medians are reported)")
    parser.add_argument("--big", action="store_true", help="also the 2.5 GiB external-data model")
    parser.add_argument("--skip-100mb", action="store_true")
    parser.add_argument("--models", nargs="*", default=[], type=Path, help="more models to time")
    parser.add_argument("--no-tools", action="store_true", help="do not time other optimizers")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 5k-40k layer stacks and the profile")
    parser.add_argument("--scaling-runs", type=int, default=3, help="runs per stack in the scaling section")
    parser.add_argument("--scaling-layers", type=int, nargs="+", default=list(LAYERS), help="stack sizes to scale over")
    parser.add_argument("--profile-layers", type=int, default=20_000, help="the stack the profile runs on")
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
    return parser.parse_args()


def _whole_runs(args: argparse.Namespace, work: Path) -> list[str]:
    """The main table, start-up, the check's cost, other tools, then scaling and the profile."""
    models = _models(args, work)
    lines: list[str] = []
    machine = f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    _show(lines, f"{machine}, {versions()}; {args.runs} paired runs, medians.", "", HEADER, "|---" * 9 + "|")
    for label, path, external, with_check in models:
        _show(lines, bench_model(label, path, external, args.runs, work, with_check))
    _show(lines, "", startup_row())
    check_models = [(label, path, external) for label, path, external, _ in models if label in CHECKED]
    if check_models:
        _show(lines, "", CHECK_HEADER, "|---" * 7 + "|")
        for label, path, external in check_models:
            _show(lines, bench_check(label, path, external, args.runs, work))
    tool_rows = []
    for label, path, external, _ in models if not args.no_tools else []:
        if label.startswith("stack 100 MB"):
            tool_rows += bench_tools(label, path, external, work, max(1, args.runs // 2))
    if tool_rows:
        _show(lines, "", "| model | other tool | wall s | peak MiB | result |", "|---|---|---|---|---|", *tool_rows)
    if not args.no_scaling:
        _show(lines, "", f"Scaling ({args.scaling_runs} runs each, medians):", "")
        lines += scaling_rows(work, args.scaling_runs, tuple(args.scaling_layers))  # printed as they come
        _show(lines, "", *profile_rows(work, args.profile_layers))
    return lines


# The models whose check is timed too (against onnxruntime's offline optimization).
CHECKED = ("ResNet-50 100 MB inline", "stack 2.5 GiB external")


def _models(args: argparse.Namespace, work: Path) -> list[tuple[str, Path, bool, bool]]:
    """(label, path, external, time the check) for the main table."""
    models = [("sample_cnn", ROOT / "models" / "sample_cnn.onnx", False, True)]
    if not args.skip_100mb:
        stack = conv_bn_stack(42, 256, 3)  # 42 × 2.25 MiB ≈ 95 MiB
        models.append(("stack 100 MB inline", write_inline(stack, work / "stack100.onnx"), False, True))
        external = write_external(stack, work / "stack100_ext" / "model.onnx")
        models.append(("stack 100 MB external", external, True, True))
        del stack
        models.append(("ResNet-50 100 MB inline", write_inline(resnet50(), work / "resnet50.onnx"), False, True))
    models.append(
        ("5,000 Conv+BN layers", write_inline(conv_bn_stack(5000, 4, 1), work / "layers5000.onnx"), False, False)
    )
    if args.big:
        big = write_big_external(work / "big" / "model.onnx", int(2.5 * 2**30))
        models.append(("stack 2.5 GiB external", big, True, False))
    return models + [(p.name, p, p.with_name(p.name + ".data").exists(), True) for p in args.models]


def _show(lines: list[str], *new: str) -> None:
    """Print `new` lines as they come (a benchmark runs for minutes) and keep them for --markdown."""
    lines += new
    if new:
        print("\n".join(new), flush=True)


if __name__ == "__main__":
    main()
