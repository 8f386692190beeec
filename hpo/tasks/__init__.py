"""Tasks: data + trained model + how a decomposition is scored (see hpo.tasks.base).

Built in: colored MNIST (the seed's benchmark), the 5-2 toy model of superposition, and
`python`, which runs a user's factory returning `hpo.UserTask`.
"""

from __future__ import annotations

from hpo.tasks.base import TASKS, Task, TaskConfig, get_task, register_task, task_kinds

__all__ = ["TASKS", "Task", "TaskConfig", "get_task", "register_task", "task_kinds"]


def load_builtin_tasks() -> None:
    """Import the built-in task modules (each registers itself on import)."""
    from hpo.tasks import colored_mnist, python_factory, toy  # noqa: F401
