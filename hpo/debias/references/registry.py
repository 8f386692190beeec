"""The references a task's `references` setting may name. A new one is a module and one
line here."""

from __future__ import annotations

import sys
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
# and every hpo module they use (hpo.debias.dfr, the pooling, LEACE's math, the head
# retraining, which layer is final...). Their source is part of a bundle's cache key
# (hpo.tasks.bundle.code_fingerprint): edit one, and cached bundles are rebuilt. They
# are found from the modules' globals, so what a reference uses is imported at the top.
def _used_modules(roots: list[str], package: str = "hpo") -> tuple[ModuleType, ...]:
    """`roots` and every module of `package` they reach through their globals (a module,
    or a function or class defined in one), transitively."""
    found: dict[str, ModuleType] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found[name] = module = sys.modules[name]
        for value in vars(module).values():
            used = (
                value.__name__
                if isinstance(value, ModuleType)
                else getattr(value, "__module__", None)
            )
            if isinstance(used, str) and used.startswith(package + ".") and used in sys.modules:
                todo.append(used)
    return tuple(found[name] for name in sorted(found))


CODE: tuple[ModuleType, ...] = _used_modules(
    [Reference.__module__, *(type(r).__module__ for r in REFERENCES.values()), __name__]
)
