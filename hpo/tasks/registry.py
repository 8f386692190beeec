"""The task kinds a study file may name: the built-in ones, and any a program registers.

The registry imports the task modules, never the reverse, so a task module is a plain
module below it. A new built-in task is one line in `BUILTIN`.
"""

from __future__ import annotations

from hpo.tasks.base import Task
from hpo.tasks.colored_mnist import ColoredMnist
from hpo.tasks.image_folder import ImageFolder
from hpo.tasks.python_factory import Python
from hpo.tasks.text_csv import TextCsv
from hpo.tasks.toy import ToySuperposition

BUILTIN: tuple[Task, ...] = (ColoredMnist(), ToySuperposition(), Python(), ImageFolder(), TextCsv())
TASKS: dict[str, Task] = {task.kind: task for task in BUILTIN}


def register_task(task: Task) -> Task:
    """Make `task` available to study files as `[task] kind = task.kind`."""
    if task.kind in TASKS and TASKS[task.kind] is not task:
        raise ValueError(f"task kind {task.kind!r} is already registered")
    TASKS[task.kind] = task
    return task


def get_task(kind: str) -> Task:
    try:
        return TASKS[kind]
    except KeyError:
        raise ValueError(f"unknown task kind {kind!r}; valid: {', '.join(TASKS)}") from None


def task_kinds() -> list[str]:
    return list(TASKS)
