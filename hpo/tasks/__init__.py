"""Tasks: data + base model + how a decomposition is scored.

Each task module offers `prepare(task, data_dir=, device=, progress=)`, `sae_data(ctx)`
and `evaluate(ctx, sae, params, with_test=)`.
"""

from __future__ import annotations

from types import ModuleType

from hpo.tasks import colored_mnist, toy

TASKS: dict[str, ModuleType] = {"colored_mnist": colored_mnist, "toy_superposition": toy}
