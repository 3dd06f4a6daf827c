"""Fine-tuning tasks for `lmforge finetune`: each supplies data, head, loss, metrics and report
(tasks/base.py `Task`); the recipe supplies the model, the method and the training loop.

    classify    sequence classification, a head on pooled features (tasks/classify.py)
    tag         BIO token classification, a head on every token; seqeval (tasks/tag.py)
    qa          extractive question answering, a start/end span head; EM and F1 (tasks/qa.py)
    text2text   task-prefixed generation on t5 / gpt; ROUGE, BLEU, chrF (tasks/text2text.py)
    sft         instruction / chat fine-tuning on conversations; exact match (tasks/sft.py)
"""

from lmforge.errors import UserError
from lmforge.tasks.base import SplitDataConfig, Task, TaskSetup
from lmforge.tasks.classify import ClassifyDataConfig, ClassifyTask
from lmforge.tasks.qa import QATask
from lmforge.tasks.sft import SFTTask
from lmforge.tasks.tag import TagTask
from lmforge.tasks.text2text import Text2TextTask

TASKS: dict[str, Task] = {
    task.name: task for task in (ClassifyTask(), TagTask(), QATask(), Text2TextTask(), SFTTask())
}
"""Task name -> Task."""


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "ClassifyDataConfig", "SplitDataConfig", "Task", "TaskSetup", "get_task"]
