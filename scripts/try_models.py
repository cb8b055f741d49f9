"""Fold every .onnx under the given paths, check each, and print a Markdown table.

    python scripts/try_models.py ../shared/realmodels [more paths…] [--out DIR]

For each model: BN count, what became of them, the check's worst relative error
and the wall time of fold + check + write (in this process).
"""

from __future__ import annotations

import argparse
import tempfile
import time
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
        return f"| {path.name} | error: {error} | | | | | |"
    seconds = time.perf_counter() - start
    counts = report.counts()
    left = sum(n.op_type == "BatchNormalization" for n in onnx.load(out, load_external_data=False).graph.node)
    worst = max(o.max_rel_err for o in report.check.outputs)
    label = f"{path.parent.name}/{path.name}"
    return (f"| {label} | {len(report.records)} | {counts.get('folded', 0)} | {counts.get('converted', 0)} | "
            f"{counts.get('skipped', 0)} | {left} | {worst:.1e} | {seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="keep the folded models here")
    args = parser.parse_args()
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="bnfold-try-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print("| model | BN | folded | converted | skipped | BN left | max rel err | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for path in model_paths(args.paths):
        print(try_one(path, out_dir), flush=True)


if __name__ == "__main__":
    main()
