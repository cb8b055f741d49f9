"""The layout holds: docs/design.md's module map names every module, its table of who may import whom is
what the code does, there is no import cycle (imports inside functions count), and the layers stay small.

The map is read from docs/design.md itself, so the page and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict

from conftest import ROOT

PACKAGE = ROOT / "bnfold"
MAP = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
MAP = MAP[MAP.index("## Module map") : MAP.index("## Decisions")]


def _rows() -> dict[str, tuple[str, str]]:
    """`graph/` or `api.py` -> (what it owns, what it may import), from the map's table."""
    rows = {}
    for line in MAP.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[a-z_/]+(?:[.]py|/)`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


ROWS = _rows()


def _modules() -> list[str]:
    """Every module as a path below bnfold/: 'api.py', 'graph/op_types.py', 'folding/rules/base.py'."""
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


def _group(module: str) -> str:
    """The map's row a module belongs to: its folder ('folding/rules/'), or itself at the top ('api.py')."""
    folder = module.rsplit("/", 1)[0] + "/" if "/" in module else None
    return folder if folder is not None else module


def _imports(module: str) -> set[str]:
    """The bnfold modules `module` imports anywhere in its text (inside functions too), as paths below bnfold/."""
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] or [node.module]
            names = [name if _path(name) else node.module for name in names]
        found |= {path for name in names if name.startswith("bnfold") and (path := _path(name))}
    return found - {module}


def _path(dotted: str) -> str | None:
    """'bnfold.graph.op_types' -> 'graph/op_types.py'; a package -> its __init__.py; None when neither."""
    parts = dotted.split(".")[1:]
    for candidate in ("/".join(parts) + ".py", "/".join([*parts, "__init__.py"])):
        if (PACKAGE / candidate).is_file():
            return candidate
    return None


def test_the_module_map_names_every_module_and_nothing_else():
    named = set()
    for row, (owns, _) in ROWS.items():
        listed = re.findall(r"`([a-z_]+[.]py)`", owns)
        named |= {row} if row.endswith(".py") else {row + name for name in listed}
    modules = set(_modules()) - {"__init__.py", "__main__.py"}
    modules -= {m for m in modules if m.endswith("/__init__.py") and m != "folding/rules/__init__.py"}
    assert named - modules == set(), "named in docs/design.md but not in bnfold/"
    assert modules - named == set(), "in bnfold/ but not in docs/design.md's module map"


def test_every_import_is_one_the_map_allows():
    allowed = {row: set(re.findall(r"`([a-z_/]+(?:[.]py|/))`", may)) for row, (_, may) in ROWS.items()}
    wrong = []
    for module in _modules():
        if module in ("__init__.py", "__main__.py"):
            continue
        group = _group(module)
        for imported in _imports(module):
            target = _group(imported)
            if imported != "__init__.py" and target != group and target not in allowed[group]:
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_check_imports_nothing_from_folding():
    """The check judges two models by itself: nothing of the pass helps it (or could fool it)."""
    leaks = [
        f"{m} -> {i}" for m in _modules() if m.startswith("check/") for i in _imports(m) if i.startswith("folding/")
    ]
    assert leaks == []


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = {module: _imports(module) for module in _modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_top_holds_at_most_ten_modules_and_every_package_says_what_it_may_import():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 10, top
    for package in (p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE):
        doc = ast.get_docstring(ast.parse(package.read_text(encoding="utf-8"))) or ""
        assert "import" in doc.lower(), f"{package.relative_to(ROOT)} does not say what it may import"


def test_no_module_is_over_350_lines():
    long = {m: n for m in _modules() if (n := len((PACKAGE / m).read_text(encoding="utf-8").splitlines())) > 350}
    assert long == {}


def test_the_cli_options_and_the_op_types_load_neither_onnx_ir_nor_onnxruntime():
    code = (
        "import sys, bnfold.cli.options, bnfold.graph.op_types, bnfold.folding.options; "
        "print(sorted(m for m in ('onnx_ir', 'onnxruntime', 'onnx', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_rule_is_registered_once_by_op_type():
    from bnfold.folding.rules import CONSUMER_RULES, PRODUCER_RULES
    from bnfold.graph import op_types

    assert set(PRODUCER_RULES) == set(op_types.PRODUCER_RULES)
    assert set(CONSUMER_RULES) == set(op_types.CONSUMER_RULES)
    by_module = defaultdict(set)
    for op, module in op_types.PRODUCER_RULES.items():
        by_module[module].add(op)
    assert all(set(PRODUCER_RULES[op].op_types) >= ops for ops in by_module.values() for op in ops)


def test_tests_import_shared_code_only_from_conftest_helpers_and_builders():
    """A test file never imports another test file: what tests share lives in conftest.py, helpers.py and builders/."""
    tests = ROOT / "tests"
    wrong = [
        f"{path.relative_to(tests)}: {line.strip()}"
        for path in tests.rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if re.match(r"\s*(from|import) test_", line)
    ]
    assert wrong == []
