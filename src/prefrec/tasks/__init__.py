"""The task table: one row per task, each owned by its module (prefrec.tasks.base says what a row holds).

A new task is one module that ends with its `TASK` row, plus its row here (docs/dev/extending.md).
"""

from prefrec.errors import UserError, did_you_mean
from prefrec.tasks import candidates, pairwise, yesno
from prefrec.tasks.base import Task

TASKS: dict[str, Task] = {row.name: row for row in (pairwise.TASK, candidates.TASK, yesno.TASK)}


def task(name: str) -> Task:
    """The row of a task name; UserError naming the known ones."""
    if name not in TASKS:
        raise UserError(f"task {name!r} is not known; expected one of {', '.join(TASKS)}{did_you_mean(name, TASKS)}")
    return TASKS[name]
