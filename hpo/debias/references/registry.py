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

# The modules that shape a fitted reference: the protocol's, each reference's and this
# one. Their source is part of a bundle's cache key (hpo.tasks.bundle.code_fingerprint):
# edit one, and cached bundles are rebuilt.
CODE: tuple[ModuleType, ...] = tuple(
    sys.modules[name]
    for name in dict.fromkeys(
        [Reference.__module__, *(type(r).__module__ for r in REFERENCES.values()), __name__]
    )
)
