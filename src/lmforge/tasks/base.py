"""What a fine-tuning task supplies to `lmforge finetune` (recipes/finetune.py).

A task owns everything that differs between, say, sentiment classification and question answering:
the data (its config section, reading, the fixed seeded split, tokenization), the head put on the
pre-trained model, the loss, the metrics, how the fine-tuned model is saved and the task's part of
the report. The recipe owns what they share: loading the model, the method (peft/methods.py), the
training loop (train/loop.py), the run directory and the cost half of the report.

A new task is one subclass of `Task` in its own module and one entry in `tasks.TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lmforge.errors import UserError


@dataclass
class SplitDataConfig:
    """The `data` section every task shares; tasks subclass it to name their own fields."""

    source: str = ""
    """A built-in source name or a data file (`--data`); each task lists what it accepts."""
    split_seed: int = 0
    """Seed of the permutation that cuts the examples into train / val / test."""
    val_fraction: float = 0.1
    """Share of the examples in the validation split."""
    test_fraction: float = 0.1
    """Share of the examples in the test split."""
    train_subset: int = 0
    """Keep only this many training examples (0 = all): short CPU runs."""


class Examples(Protocol):
    """The task's examples, split: what `main` prints and reports about the data."""

    source: dict
    """Provenance: name, path, and for fetched sources package, version and licence; `sizes`."""

    def size(self, split: str) -> int: ...


class Metrics(Protocol):
    """A split's scores."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat name -> value (written to metrics.jsonl with `val_` / `test_` prefixes)."""
        ...

    def summary(self) -> str:
        """One line for the console, e.g. 'accuracy 0.8120 (macro F1 0.8113)'."""
        ...


@dataclass
class TaskSetup:
    model: nn.Module
    """What the method prepares and the loop trains: the backbone with the task's head on it (as
    `backbone` and `head`), or the backbone itself for tasks without a head (text-to-text)."""
    data: Any
    """The batch source for train/loop.py (`get_batch`, `iter_eval_batches`, `max_length`)."""
    examples: Examples
    about: str
    """What the data holds beyond its size, for the console: e.g. '2 labels'."""


class Task:
    """Base of the tasks; subclasses set the class attributes and implement the methods."""

    name: str = ""
    description: str = ""
    data_config: type[SplitDataConfig] = SplitDataConfig
    """The dataclass of this task's `data` section."""
    families: tuple[str, ...] = ("gpt", "bert", "t5")
    """Model families the task can fine-tune."""
    train_defaults: dict = {}
    """Train-section defaults of the task (the method's and the run's own values win)."""

    def check_family(self, family: str) -> None:
        if family not in self.families:
            raise UserError(
                f"task {self.name!r} cannot fine-tune a {family} model; it takes "
                + ", ".join(self.families)
            )

    def setup(self, backbone: nn.Module, tokenizer, cfg) -> TaskSetup:
        """The model to train, its data and examples, built from a loaded backbone."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        """The training objective on one batch (train/losses.py signature)."""
        raise NotImplementedError

    def evaluate(
        self, model: nn.Module, data, split: str, device: torch.device, dtype: torch.dtype
    ) -> Metrics:
        """Scores of `model` on `split` of `data`."""
        raise NotImplementedError

    def cache_features(
        self, setup: TaskSetup, device: torch.device, dtype: torch.dtype, show_progress: bool
    ) -> tuple[nn.Module, Any] | None:
        """For the feature method: (head, batches of cached backbone features) to train instead of
        the whole model, or None where the task runs the frozen backbone at every step. The head
        may be the model's head standardized (peft/standardize.py): it is folded back once trained
        and scored."""
        return None

    def save(self, model: nn.Module, run_dir: Path, tokenizer, info: dict) -> tuple[str, ...]:
        """Write the fine-tuned model into `run_dir`; return the names of its weight files."""
        raise NotImplementedError

    def report(self, setup: TaskSetup, metrics: dict[str, Metrics]) -> list[str]:
        """Markdown lines of the report's result section (the table of scores and anything the
        task adds, such as a baseline or examples)."""
        raise NotImplementedError

    def describe_data(self, setup: TaskSetup) -> list[str]:
        """Markdown bullet lines about the data beyond its source and split sizes."""
        return []


def table_cell(text: str, limit: int = 160) -> str:
    """`text` as one Markdown table cell: one line, pipes escaped, at most `limit` characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or " "
