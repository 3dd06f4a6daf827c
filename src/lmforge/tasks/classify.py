"""`--task classify`: sequence classification with a head on pooled features, on any family.

Data (data/classification.py): Rotten Tomatoes (built in) or a JSONL/CSV file of labelled texts,
split by a seed; the head (models/heads.py): dropout and one linear layer on the pooled final
hidden states; the loss: cross-entropy over the labels; the metrics (eval/classification.py):
accuracy and macro F1, next to the majority-class baseline. The feature method caches the frozen
backbone's pooled features once (peft/methods.py `cache_features`) and trains the head on them
standardized (peft/standardize.py). The result is saved as a classifier directory that
`lmforge classify` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.data.classification import (
    FRAMINGS,
    LabelledSplits,
    TokenBatches,
    load_labelled_splits,
)
from lmforge.eval.classification import ClassificationMetrics, classification_metrics, predict
from lmforge.models import registry
from lmforge.models.heads import SequenceClassifier, save_classifier
from lmforge.tasks.base import SplitDataConfig, Task, TaskSetup
from lmforge.train.losses import classification_loss


@dataclass
class ClassifyDataConfig(SplitDataConfig):
    source: str = "rotten-tomatoes"
    """`rotten-tomatoes` or a .jsonl / .csv file of labelled texts (`--data`)."""
    text_field: str = "text"
    """Field (JSONL key or CSV column) holding the text."""
    label_field: str = "label"
    """Field holding the label (a string or an integer)."""
    labels: list[str] = field(default_factory=list)
    """The label set in index order (default: the sorted labels of the data)."""


def labelled_splits(d: ClassifyDataConfig) -> LabelledSplits:
    """The examples of a `data` section, split: what the task trains and scores on (and what
    prompting, recipes/prompt_classify.py, scores on)."""
    return load_labelled_splits(
        d.source,
        text_field=d.text_field,
        label_field=d.label_field,
        labels=d.labels,
        seed=d.split_seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        train_subset=d.train_subset,
    )


class ClassifyTask(Task):
    name = "classify"
    description = "sequence classification: a head on pooled features; accuracy and macro F1"
    data_config = ClassifyDataConfig

    def setup(self, backbone, tokenizer, cfg) -> TaskSetup:
        """The data split and tokenized as the backbone's family frames text, and a head with one
        output per label."""
        splits = labelled_splits(cfg.data)
        family = registry.family_of(backbone).name
        framing = FRAMINGS[family](tokenizer, backbone.config)
        max_length = min(cfg.train.block_size, backbone.config.max_seq_len)  # longer texts are cut
        data = TokenBatches.from_splits(splits, tokenizer, framing, max_length)
        torch.manual_seed(cfg.train.seed)  # the head's initialisation
        labels = splits.label_names
        model = SequenceClassifier(
            backbone, len(labels), cfg.head.dropout, labels, cfg.head.pooling
        )
        return TaskSetup(model, data, splits, f"{len(labels)} labels")

    def loss(self, model, batch):
        return classification_loss(model, batch)

    def evaluate(self, model, data, split, device, dtype) -> ClassificationMetrics:
        """Accuracy and macro F1 of `model` (classifier, or head on cached features)."""
        predicted, truth = predict(model, data, split, 64, device, dtype)
        return classification_metrics(predicted, truth, model.num_labels)

    def cache_features(self, setup, device, dtype, show_progress):
        from lmforge.peft import StandardizedHead, cache_features

        features = cache_features(
            setup.model, setup.data, device, dtype, show_progress=show_progress
        )
        setup.model.head = StandardizedHead(setup.model.head, features.features["train"])
        return setup.model.head, features

    def save(self, model, run_dir: Path, tokenizer, info: dict) -> tuple[str, ...]:
        save_classifier(model, run_dir, tokenizer, info)
        return ("model.safetensors", "head.safetensors")

    def report(self, setup, metrics) -> list[str]:
        splits = setup.examples
        names = splits.label_names
        train_labels = torch.tensor(splits.labels["train"])
        majority = int(torch.bincount(train_labels, minlength=len(names)).argmax())
        test_labels = torch.tensor(splits.labels["test"])
        baseline = float((test_labels == majority).float().mean())
        val, test = metrics["val"], metrics["test"]
        return [
            f"{setup.model.pooling} pooling.",
            "",
            "| | validation | test |",
            "|---|---|---|",
            f"| accuracy | {val.accuracy:.4f} | {test.accuracy:.4f} |",
            f"| macro F1 | {val.macro_f1:.4f} | {test.macro_f1:.4f} |",
            f"| examples | {val.count:,} | {test.count:,} |",
            "",
            f"Majority-class baseline (always `{names[majority]}`): test accuracy "
            f"{baseline:.4f}. Per-class test F1: "
            + ", ".join(f"{n} {f:.3f}" for n, f in zip(names, test.f1))
            + ".",
        ]

    def describe_data(self, setup) -> list[str]:
        return [
            f"- labels: {', '.join(setup.examples.label_names)}; inputs truncated to "
            f"{setup.data.max_length} tokens at most"
        ]
