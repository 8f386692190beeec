"""The references a task's `references` setting may name. A new one is a module and one
line here."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from types import ModuleType

from hpo.debias.references.base import Reference
from hpo.debias.references.erasure import Leace
from hpo.debias.references.head_retraining import RetrainHead
from hpo.debias.references.last_layer import Dfr, LastLayer
from hpo.debias.references.oracle import Oracle
from hpo.registry import Registry

REFERENCES: Registry[Reference] = Registry("reference")
for _reference in (LastLayer(), Dfr(), RetrainHead(), Leace(), Oracle()):
    REFERENCES.register(_reference.name, _reference)


# The modules that shape a fitted reference: the protocol's, each reference's, this one
# and every hpo module they import, at the top or inside a function (hpo.debias.dfr, the
# pooling, hpo.models.training's head retraining...). Their source is part of a bundle's
# cache key (hpo.tasks.bundle.code_fingerprint): edit one, and cached bundles are rebuilt.
def _used_modules(roots: list[str], package: str = "hpo") -> tuple[ModuleType, ...]:
    """`roots` and every module of `package` they import, transitively."""
    found: dict[str, ModuleType] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in found:
            found[name] = module = importlib.import_module(name)
            todo.extend(_imported(module, package))
    return tuple(found[name] for name in sorted(found))


def _imported(module: ModuleType, package: str) -> list[str]:
    """The modules of `package` that `module`'s source imports anywhere (`from a.b
    import c` gives a.b, and a.b.c where that is a module)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    ours = [n for n in names if n == package or n.startswith(package + ".")]
    return [n for n in ours if _find(n)]


def _find(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a.b.c where a.b is a module, not a package
        return False


CODE: tuple[ModuleType, ...] = _used_modules(
    [Reference.__module__, *(type(r).__module__ for r in REFERENCES.values()), __name__]
)
