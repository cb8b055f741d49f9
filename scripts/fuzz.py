"""The longer run of the mutation fuzzer (tests/builders/fuzz.py): N seeded mutants, each folded with the CLI and judged
against its contract (exit 0/1/2, one error line, no traceback or internal error, no output after a refusal, the
input untouched, an exit-0 output that onnxruntime loads and that computes what the input computes).

    python scripts/fuzz.py 2000 [--first 0] [--models real.onnx ...]   # real models join the seed models
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from builders.fuzz import mutant, run_mutant, seed_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int)
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--models", type=Path, nargs="*", default=[], help="more models to mutate (inline data)")
    args = parser.parse_args()
    models = {**seed_models(), **{path.stem: onnx.load(path) for path in args.models}}
    broken: list[str] = []
    kinds: Counter = Counter()
    exits: Counter = Counter()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.first, args.first + args.count):
            kinds.update(mutant(seed, models)[0].split("+")[1:])
            code, problem = run_mutant(Path(folder), seed, models)
            exits[code] += 1
            if problem is not None:
                broken.append(problem)
                print(problem, flush=True)
    elapsed = time.perf_counter() - start
    print(f"{args.count} mutants in {elapsed:.0f} s; mutations applied: {dict(sorted(kinds.items()))}")
    print(f"exit codes: {dict(sorted(exits.items(), key=str))}; {len(broken)} broke the contract")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
