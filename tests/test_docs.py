"""docs/design.md's module map stays true: every module is in it, and every module it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_module_map_names_every_module_and_nothing_else():
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = text[text.index("## Module map") : text.index("## Decisions")]
    named = set(re.findall(r"`((?:rules/)?[a-z_]+[.]py)`", section))
    modules = {str(p.relative_to(ROOT / "bnfold")) for p in (ROOT / "bnfold").rglob("*.py")}
    modules -= {"__init__.py", "__main__.py"}  # the package's lazy exports and `python -m bnfold`
    assert named - modules == set(), "named in docs/design.md but not in bnfold/"
    assert modules - named == set(), "in bnfold/ but not in docs/design.md's module map"


def test_no_module_is_over_350_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "bnfold").rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 350
    }
    assert long == {}
