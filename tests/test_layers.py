"""The package's layers point down: every import of hpo's own modules, read from the source.

Every `import` and `from ... import` counts, at module level, inside functions and under
`TYPE_CHECKING` alike: a lower layer that needs something from a higher one takes a
callback or a protocol instead. The graph of hpo's modules must also have no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import hpo

ROOT = Path(hpo.__file__).parent

# Lowest first. A module may import its own layer (without a cycle) and any lower one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("hpo.errors", "hpo.files", "hpo.paths", "hpo.versions", "hpo.cpus", "hpo.device"),
    ("hpo.registry",),
    ("hpo.strict", "hpo.search_spec", "hpo.params", "hpo.config"),  # the study-file schema
    ("hpo.plans", "hpo.results"),  # what a trial produces
    ("hpo.sae",),  # the Faithful-SAE: model, losses, training
    ("hpo.data",),  # datasets and the content-addressed cache
    ("hpo.models",),  # base models and their training
    ("hpo.debias",),  # editing a weight, scoring, references, edit strategies
    ("hpo.tasks",),  # data + base model + how a decomposition is scored
    ("hpo.storage",),  # Optuna storage, artifacts, what a trial stores
    ("hpo.service",),  # studies, trials, workers
    ("hpo.outputs",),  # report, export, dashboard, notes, tables
    ("hpo", "hpo.cli", "hpo.__main__"),  # the public API and the command line
)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, imported hpo module) for every import in the file, wherever it sits."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from hpo.tasks import bundle`: a module too
                sub = f"{target}.{alias.name}"
                if (root.parent / sub.replace(".", "/")).with_suffix(".py").exists():
                    yield node.lineno, sub


def layer_of(module: str) -> int:
    """The index of the layer a module belongs to (by its longest listed prefix)."""
    best, index = "", -1
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    if index < 0:
        raise AssertionError(f"{module}: in no layer; add it to LAYERS in {__file__}")
    return index


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported hpo module: line of its first import}."""
    graph: dict[str, dict[str, int]] = {}
    for path in sorted(root.rglob("*.py")):
        edges = graph.setdefault(module_name(path, root), {})
        for line, target in imports_of(path, root):
            if target == root.name or target.startswith(root.name + "."):
                edges.setdefault(target, line)
    return graph


def upward_imports(root: Path) -> list[str]:
    found = []
    for module, edges in import_graph(root).items():
        for target, line in edges.items():
            if layer_of(target) > layer_of(module):
                found.append(f"{module}:{line} imports {target}, a higher layer")
    return found


def cycles(root: Path) -> list[list[str]]:
    """Every cycle's modules (strongly connected components of more than one module, and
    modules importing themselves), by Tarjan's algorithm."""
    graph = {m: list(e) for m, e in import_graph(root).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, []):
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_higher_layer() -> None:
    assert upward_imports(ROOT) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(ROOT) == []


def test_every_module_is_in_a_layer() -> None:
    for module in import_graph(ROOT):
        layer_of(module)


def test_a_planted_upward_import_is_caught(tmp_path: Path) -> None:
    """The guard itself: a tiny package whose config imports outputs inside a function
    fails both checks."""
    root = tmp_path / "hpo"
    (root / "config").mkdir(parents=True)
    (root / "outputs").mkdir()
    (root / "__init__.py").write_text("")
    (root / "outputs" / "__init__.py").write_text("")
    (root / "outputs" / "report.py").write_text("from hpo.config import StudyFile\n")
    (root / "config" / "__init__.py").write_text(
        "def f():\n    from hpo.outputs import report\n    return report\n"
    )
    assert upward_imports(root) == [
        "hpo.config:2 imports hpo.outputs, a higher layer",
        "hpo.config:2 imports hpo.outputs.report, a higher layer",
    ]
    assert cycles(root) == [["hpo.config", "hpo.outputs.report"]]


@pytest.mark.parametrize("module", ["hpo.outputs.export", "hpo.service.runner", "hpo.tasks"])
def test_known_modules_sit_where_the_layout_says(module: str) -> None:
    assert layer_of(module) > layer_of("hpo.config")
