"""Cost against graph size (`bench.py --scaling`): stacks of 5,000 to 40,000 Conv+BN+ReLU layers, with
their own weights and sharing one weight and one BN parameter set, and a chain of 100,000 ReLU with
nothing to fold; then where one fold's time goes (the profile's top entries).

Each stack is timed as whole processes against the floor (`onnx.load` + `onnx.save`) and against
onnx-ir's own round trip (load, deserialize into onnx-ir, serialize, save: the least any tool built on
onnx-ir pays). The time per layer leaves out the fixed cost (start-up, imports), measured on a
one-layer stack.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
from bench_process import bnfold_argv, clean, median, paired, run_process
from bench_stacks import conv_bn_stack, relu_chain, shared_stack

LAYERS = (5_000, 10_000, 20_000, 40_000)
STACKS = {"own weights": conv_bn_stack, "shared weights": shared_stack}

SCALING_HEADER = (
    "| model | floor s | onnx-ir round trip s | bnfold s | ÷ floor | ÷ round trip | ms per layer | peak MiB |"
)


def fixed_cost(work: Path, runs: int) -> float:
    """bnfold's wall time on a one-layer stack: start-up and imports, what every run pays once."""
    src = work / "layers1.onnx"
    onnx.save(conv_bn_stack(1, 4, 1), src)
    dst = work / "layers1_out.onnx"
    samples = [run_process(bnfold_argv(src, dst, check=False)) for _ in range(runs)]
    clean(dst)
    return median(samples, "seconds")


def scaling_rows(work: Path, runs: int, layers: tuple[int, ...] = LAYERS) -> list[str]:
    """One row per stack and size, then the spread of the time per layer for each kind of stack."""
    print(SCALING_HEADER + "\n" + "|---" * 8 + "|", flush=True)
    fixed = fixed_cost(work, runs)
    rows, spreads = [], []
    for kind, build in STACKS.items():
        per_layer = []
        for count in layers:
            src = work / f"{kind.split()[0]}{count}.onnx"
            onnx.save(build(count, 4, 1), src)
            seconds, row = _row(f"{count:,} layers, {kind}", src, work, runs)
            per_layer.append((seconds - fixed) / (count - 1) * 1e3)
            rows.append(row.replace("| – |", f"| {per_layer[-1]:.3f} |", 1))
            print(rows[-1], flush=True)
            src.unlink()
        spreads.append(f"{kind}: {min(per_layer):.3f}–{max(per_layer):.3f} ms ({_spread(per_layer):.0%} apart)")
    src = work / "relu100k.onnx"
    onnx.save(relu_chain(100_000), src)
    rows.append(_row("100,000 ReLU, nothing to fold", src, work, runs)[1])
    print(rows[-1], flush=True)
    src.unlink()
    summary = f"Fixed cost (a one-layer stack) {fixed:.2f} s; time per layer across sizes: " + "; ".join(spreads)
    print("\n" + summary, flush=True)
    return [SCALING_HEADER, "|---" * 8 + "|", *rows, "", summary]


def _row(label: str, src: Path, work: Path, runs: int) -> tuple[float, str]:
    out_dir = work / "scaling"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = paired(src, out_dir, False, runs, round_trip=True)
    floor, trip, ours = (median(results[k], "seconds") for k in ("floor", "onnx-ir", "bnfold"))
    peak = median(results["bnfold"], "peak_mib")
    row = (
        f"| {label} | {floor:.2f} | {trip:.2f} | {ours:.2f} | {ours / floor:.1f}× | {ours / trip:.2f}× | – "
        f"| {peak:,.0f} |"
    )
    return ours, row


def _spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


# cProfile in the CLI process, on one model; the entries from bnfold and onnx-ir with the most cumulative time.
PROFILE = """
import cProfile, pstats, sys
from bnfold.cli.app import main
top = int(sys.argv[3])
sys.argv = ["bnfold", sys.argv[1], sys.argv[2], "--no-check", "--quiet"]
profile = cProfile.Profile()
try:
    profile.runcall(main)
except SystemExit:
    pass
stats = pstats.Stats(profile).stats
total = max(entry[3] for entry in stats.values())
rows = []
for (path, line, name), (calls, _, own, cumulative, _) in stats.items():
    package = next((p for p in ("bnfold/", "onnx_ir/") if p in path), None)
    if package is None or name.startswith("<") or name == "wrapper" or "/bnfold/cli/" in path:
        continue
    where = path[path.rindex(package):]
    rows.append((cumulative, own, calls, f"{where}:{line}({name})"))
for cumulative, own, calls, where in sorted(rows, reverse=True)[:top]:
    print(f"| {cumulative / total:.0%} | {own / total:.1%} | {calls:,} | `{where}` |")
"""


def profile_rows(work: Path, layers: int = 20_000, top: int = 25) -> list[str]:
    """The top entries of a cProfile of `bnfold --no-check` on a stack of `layers` Conv+BN layers, as shares
    of the run (cProfile slows Python code down about twofold; the shares are what it tells)."""
    src, dst = work / f"profile{layers}.onnx", work / f"profile{layers}_out.onnx"
    onnx.save(conv_bn_stack(layers, 4, 1), src)
    found = subprocess.run(
        [sys.executable, "-c", PROFILE, str(src), str(dst), str(top)], capture_output=True, text=True, check=True
    )
    clean(dst)
    src.unlink()
    return [
        f"Profile of `bnfold --no-check` on {layers:,} Conv+BN layers (cProfile; shares of the whole run):",
        "",
        "| cumulative | own | calls | function |",
        "|---|---|---|---|",
        *found.stdout.splitlines(),
    ]
