"""The inference benchmark (`bench.py --inference`): the original and the folded model on onnxruntime's
CPU provider, one thread, at ORT_DISABLE_ALL and ORT_ENABLE_ALL, in interleaved runs over rounds of
fresh sessions, with the original saved again to another file as a control for the machine's noise."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from bench_process import ROOT, versions

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
    from bench_transformers import BUILDERS as FUSED_PATTERN_BUILDERS

    builders = {name: BUILDERS[name] for name in ("resnet18", "preact_resnet", "densenet121", "mlp")}
    for name, build in {**builders, **FUSED_PATTERN_BUILDERS}.items():
        path = work / f"{name}.onnx"
        onnx.save(build(), path)
        models.append((name, path, BATCH.get(name, 1)))
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
