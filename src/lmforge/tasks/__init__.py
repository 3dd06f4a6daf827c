"""Fine-tuning tasks for `lmforge finetune`: each supplies data, head, loss, metrics and report
(tasks/base.py `Task`); the recipe supplies the model, the method and the training loop."""

from lmforge.errors import UserError
from lmforge.tasks.base import SplitDataConfig, Task, TaskSetup
from lmforge.tasks.classify import ClassifyDataConfig, ClassifyTask

TASKS: dict[str, Task] = {task.name: task for task in (ClassifyTask(),)}
"""Task name -> Task. `sft` (instruction tuning) joins here with the fine-tuning issue."""


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "ClassifyDataConfig", "SplitDataConfig", "Task", "TaskSetup", "get_task"]
