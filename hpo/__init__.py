"""Faithful-SAE HPO: hyperparameter optimisation for Faithful-SAE debiasing, on Optuna.

The public API for your own model is `UserTask` and `Split` (see hpo.tasks.user and the
README's "Your own model").

They are imported on first use, not with the package (which would import torch): the
`hpo` command sets OpenMP's environment before torch loads (see hpo.cpus).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo.tasks.user import Split, UserTask

__all__ = ["Split", "UserTask"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hpo.tasks import user

        return getattr(user, name)
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
