"""The command-line contract under a seeded mutation fuzzer (tests/builders/fuzz.py; issue 21): 500 mutants."""

from __future__ import annotations

from builders.fuzz import run_mutant, seed_models

MUTANTS = 500


def test_no_mutant_breaks_the_contract(tmp_path):
    models = seed_models()
    outcomes = [run_mutant(tmp_path, seed, models) for seed in range(MUTANTS)]
    broken = [problem for _, problem in outcomes if problem is not None]
    assert not broken, "\n".join(broken)
    exits = [code for code, _ in outcomes]
    assert exits.count(0) >= MUTANTS // 5 and exits.count(2) >= MUTANTS // 5  # both sides of the contract seen
