"""Timing whole processes for the benchmark: wall time and each process's own peak resident memory,
bnfold against the floor (a process that only loads and saves with onnx), in alternating paired runs."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from bnfold.graph.proto_walk import proto_tensors

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


# The least any tool built on onnx-ir pays for an inline model: load, build the onnx-ir model, serialize it back,
# save; onnx-ir's sympy import deferred as bnfold's CLI defers it, and no garbage collection at all.
ROUND_TRIP = """
import gc, sys
gc.disable()
from bnfold.cli.process import defer_sympy
defer_sympy()
import onnx, onnx_ir as ir
model = ir.serde.deserialize_model(onnx.load(sys.argv[1]))
onnx.save(ir.serde.serialize_model(model), sys.argv[2])
"""


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


def paired(src: Path, out_dir: Path, external: bool, runs: int, round_trip: bool = False) -> dict[str, list[Sample]]:
    """Floor and bnfold --no-check alternately (and onnx-ir's round trip, with `round_trip`), `runs` times
    each, after one untimed round (warm caches)."""
    commands = {
        "floor": lambda dst: [sys.executable, "-c", FLOOR, str(src), str(dst), "1" if external else "0"],
        "bnfold": lambda dst: bnfold_argv(src, dst, check=False),
    }
    if round_trip:
        commands["onnx-ir"] = lambda dst: [sys.executable, "-c", ROUND_TRIP, str(src), str(dst)]
    results: dict[str, list[Sample]] = {label: [] for label in commands}
    for run in range(runs + 1):
        for label, argv in commands.items():
            dst = out_dir / f"{label}.onnx"
            clean(dst)
            sample = run_process(argv(dst))
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


def model_bytes(path: Path) -> int:
    return path.stat().st_size + sum(data.stat().st_size for data in data_files(path))


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("onnx", "onnx-ir", "onnxruntime", "numpy", "typer"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{package} {version(package)}")
    return ", ".join(found)
