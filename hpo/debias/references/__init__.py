"""Reference debiasing methods, fitted once per bundle, scored beside every trial.

A reference is `fit(source) -> Fitted` (base.py): sklearn-shaped, fitted on the balanced
probe split (or, for the oracle, handed over by a task that can train one), and its
output is an edit of the same model: parameter overrides, or a whole model of the same
architecture. One module per family: last_layer (last-layer retraining, DFR),
head_retraining, erasure (LEACE), oracle. `REFERENCES` (registry.py) maps a name to its
method; which ones run is the task's `references` setting, and part of the bundle's
cache key, as is the source of the modules in `CODE`.
"""

from hpo.debias.references.base import CannotRun, Fitted, Reference, ReferenceSource
from hpo.debias.references.registry import CODE, REFERENCES

__all__ = ["CODE", "REFERENCES", "CannotRun", "Fitted", "Reference", "ReferenceSource"]
