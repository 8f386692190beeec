"""The task kinds a study file may name: the built-in ones, and any a program registers.

The registry imports the task modules, never the reverse, so a task module is a plain
module below it. A new built-in task is one line in `BUILTIN`.
"""

from __future__ import annotations

from hpo.registry import Registry
from hpo.tasks.base import AnyTask
from hpo.tasks.colored_mnist import ColoredMnist
from hpo.tasks.image_folder import ImageFolder
from hpo.tasks.python_factory import Python
from hpo.tasks.text_csv import TextCsv
from hpo.tasks.toy import ToySuperposition

BUILTIN: tuple[AnyTask, ...] = (
    ColoredMnist(),
    ToySuperposition(),
    Python(),
    ImageFolder(),
    TextCsv(),
)
TASKS: Registry[AnyTask] = Registry("task kind")
for _task in BUILTIN:
    TASKS.register(_task.kind, _task)


def register_task(task: AnyTask) -> AnyTask:
    """Make `task` available to study files as `[task] kind = task.kind` (registering the
    same object twice is harmless; another task under a taken kind is an error)."""
    if task.kind in TASKS and TASKS[task.kind] is task:
        return task
    return TASKS.register(task.kind, task)


def get_task(kind: str) -> AnyTask:
    return TASKS.get(kind)


def task_kinds() -> list[str]:
    return list(TASKS.names())
