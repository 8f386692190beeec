"""Small modules and short functions: a newcomer reads one of either at a time.

The limits are the code-style card's (a module past ~300 lines holds more than one
concept; a function past ~50 lines does more than one thing). They are checked from the
source, so a change that grows past them says so here, with the names to split.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hpo

ROOT = Path(hpo.__file__).parent
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 50


def too_long_modules(root: Path, limit: int) -> list[str]:
    return [
        f"{path.relative_to(root.parent)}: {n} lines"
        for path in sorted(root.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > limit
    ]


def too_long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    found.append(
                        f"{path.relative_to(root.parent)}:{node.lineno} {node.name}: {lines}"
                    )
    return found


def test_no_module_is_over_the_limit() -> None:
    assert too_long_modules(ROOT, MAX_MODULE_LINES) == []


def test_no_function_is_over_the_limit() -> None:
    assert too_long_functions(ROOT, MAX_FUNCTION_LINES) == []


def test_a_planted_long_function_and_module_are_caught(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (package / "long.py").write_text(f"def long() -> None:\n{body}\n")
    assert too_long_functions(package, MAX_FUNCTION_LINES) == ["pkg/long.py:1 long: 61"]
    assert too_long_modules(package, MAX_MODULE_LINES) == []
    assert too_long_modules(package, 50) == ["pkg/long.py: 61 lines"]
