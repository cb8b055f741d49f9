"""Fold every .onnx under the given paths, check each, and print a Markdown table.

    python scripts/try_models.py ../shared/realmodels [more paths…] [--out DIR]

For each model: BN count, what became of them, the Mul/Add/Sub/Div folded besides,
main-graph nodes before → after, the check's verdict and worst relative error (over outputs
and sites, each against the largest value it holds) and the wall time of fold + check + write
(in this process).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import onnx

import bnfold


def model_paths(roots: list[Path]) -> list[Path]:
    found = []
    for root in roots:
        found.extend(sorted(root.rglob("*.onnx")) if root.is_dir() else [root])
    return found


def try_one(path: Path, out_dir: Path) -> str:
    out = out_dir / (path.parent.name + "__" + path.name)
    start = time.perf_counter()
    try:
        report = bnfold.fold_file(path, out)
    except bnfold.BnfoldError as error:
        return f"| {path.name} | error: {error} |" + " |" * 8
    seconds = time.perf_counter() - start
    bns = report.batch_norms()
    counts = Counter(record.action for record in bns)
    others = sum(record.action == "folded" for record in report.records if record.op != "BatchNormalization")
    before, after = (_nodes(onnx.load(p, load_external_data=False)) for p in (path, out))
    left = after["BatchNormalization"]
    check = report.check
    worst = max((c.value_rel_err for c in [*check.outputs, *check.sites]), default=0.0) if check else None
    verdict = check.verdict if check else "not needed"
    label = f"{path.parent.name}/{path.name}"
    error = "–" if worst is None else f"{worst:.1e}"
    return (
        f"| {label} | {len(bns)} | {counts['folded']} | {counts['kept']} | {counts['converted']} | "
        f"{counts['skipped']} | {others} | {left} | {sum(before.values())} → {sum(after.values())} | "
        f"{verdict} | {error} | {seconds:.2f} |"
    )


def _nodes(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="keep the folded models here")
    args = parser.parse_args()
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="bnfold-try-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        "| model | BN | folded | kept | converted | skipped | Mul/Add folded | BN left | nodes | check | "
        "max rel err | seconds |"
    )
    print("|---" * 12 + "|")
    for path in model_paths(args.paths):
        print(try_one(path, out_dir), flush=True)


if __name__ == "__main__":
    main()
