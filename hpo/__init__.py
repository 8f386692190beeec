"""Faithful-SAE HPO: hyperparameter optimisation for Faithful-SAE debiasing, on Optuna.

The public API for your own model is `UserTask` and `Split` (see hpo.tasks.user and the
README's "Your own model").
"""

from hpo.tasks.user import Split, UserTask

__all__ = ["Split", "UserTask"]
__version__ = "0.1.0"
