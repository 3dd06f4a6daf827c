"""`--task qa`: extractive question answering with a start/end span head, on any family.

Data (data/qa.py): `shakespeare-speakers` (built in, generated: who says / replies to / speaks
after whom in short passages of the plays) or a JSONL / SQuAD v1.1 JSON file of questions on
contexts, split by context with a seed; the head (models/span_heads.py): one linear layer from each
token's final hidden state to a start and an end logit; the loss: (CE(start) + CE(end)) / 2 over
the context positions only (Devlin et al., 2019, section 4.2: the log-likelihood of the correct
start and end positions, averaged); the metrics (eval/qa.py): SQuAD v1.1 exact match and token F1
of the best span (start <= end, at most `data.max_answer_tokens` tokens), next to the trivial
baseline that always answers the context's first word (on the built-in data, the first speaker).

The feature method freezes the backbone and trains the head alone, but caches nothing: a span head
reads every token's hidden state, (N, T, C) per split, so `cache_features` returns None and the
frozen backbone (kept in eval mode, without gradients) runs at every step. The result is saved as
a span-extractor directory that `lmforge answer` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.data.qa import NO_TARGET, QABatches, load_qa_splits, qa_framing
from lmforge.device import autocast
from lmforge.errors import UserError
from lmforge.eval.qa import QAMetrics, best_spans, exact_match, qa_metrics, token_f1
from lmforge.models import registry
from lmforge.models.span_heads import SpanExtractor, mask_outside_context, save_span_extractor
from lmforge.tasks.base import SplitDataConfig, Task, TaskSetup, table_cell

REPORT_EXAMPLES = 5
"""Test questions shown in the report with their gold and predicted answers."""


@dataclass
class QADataConfig(SplitDataConfig):
    source: str = "shakespeare-speakers"
    """`shakespeare-speakers` or a .jsonl / SQuAD v1.1 .json file of questions (`--data`)."""
    generated_examples: int = 6000
    """shakespeare-speakers: how many questions to generate (3 per passage; ~6,200 exist)."""
    generated_seed: int = 0
    """shakespeare-speakers: seed of the generator (passages, question kinds, quotes)."""
    max_answer_tokens: int = 30
    """Longest answer span the decoder considers, in tokens."""


def qa_loss(model, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(CE(start) + CE(end)) / 2, each a mean over the questions that have a target, with the
    softmax over context positions only. batch: input_ids, attention_mask, token_type_ids,
    context_mask (B, T) each and targets (B, 2)."""
    input_ids, attention_mask, token_type_ids, context_mask, targets = batch
    start_logits, end_logits = model(input_ids, attention_mask, token_type_ids)  # (B, T) each
    count = (targets[:, 0] != NO_TARGET).sum().clamp(min=1)
    total = 0.0
    for logits, target in ((start_logits, targets[:, 0]), (end_logits, targets[:, 1])):
        masked = mask_outside_context(logits, context_mask)  # (B, T) fp32
        total = total + F.cross_entropy(masked, target, ignore_index=NO_TARGET, reduction="sum")
    return total / (2 * count)


@torch.no_grad()
def predict_answers(
    model: SpanExtractor,
    data: QABatches,
    split: str,
    max_answer_tokens: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[tuple[str, float]]:
    """(answer text, span probability) of every question of `split`, in order."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    answers: list[tuple[str, float]] = []
    for batch in data.iter_eval_batches(split, batch_size):
        input_ids, attention_mask, token_type_ids, context_mask, _ = (t.to(device) for t in batch)
        with autocast(device, dtype):
            start_logits, end_logits = model(input_ids, attention_mask, token_type_ids)
        starts, ends, scores = best_spans(start_logits, end_logits, context_mask, max_answer_tokens)
        for s, e, p in zip(starts.tolist(), ends.tolist(), scores.tolist()):
            answers.append((data.answer(split, len(answers), s, e), p))
    model.train(was_training)
    return answers


def first_word_baseline(data: QABatches, split: str) -> tuple[float, float]:
    """(EM, F1) of always answering the context's first word."""
    examples = data.examples[split]
    guesses = [(e.context.split() or [""])[0] for e in examples]
    em = sum(max(exact_match(g, a) for a in e.answers) for g, e in zip(guesses, examples))
    f1 = sum(max(token_f1(g, a) for a in e.answers) for g, e in zip(guesses, examples))
    return em / max(len(examples), 1), f1 / max(len(examples), 1)


class QATask(Task):
    name = "qa"
    description = "extractive question answering: a start/end span head; SQuAD EM and F1"
    data_config = QADataConfig

    def setup(self, backbone, tokenizer, cfg) -> TaskSetup:
        """The questions split and framed as the backbone's family reads a pair, and a span head."""
        d = cfg.data
        if d.max_answer_tokens < 1:
            raise UserError(f"data.max_answer_tokens must be at least 1, got {d.max_answer_tokens}")
        splits = load_qa_splits(
            d.source,
            generated_examples=d.generated_examples,
            generated_seed=d.generated_seed,
            seed=d.split_seed,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            train_subset=d.train_subset,
        )
        family = registry.family_of(backbone).name
        framing = qa_framing(family, tokenizer, backbone.config)
        max_length = min(cfg.train.block_size, backbone.config.max_seq_len)  # contexts are cut
        data = QABatches.from_splits(splits, tokenizer, framing, max_length)
        splits.source["dropped_train"] = data.dropped
        torch.manual_seed(cfg.train.seed)  # the head's initialisation
        model = SpanExtractor(backbone, cfg.head.dropout, d.max_answer_tokens)
        about = f"{data.dropped:,} training questions dropped (answer beyond {max_length} tokens)"
        return TaskSetup(model, data, splits, about)

    def loss(self, model, batch):
        return qa_loss(model, batch)

    def evaluate(self, model, data, split, device, dtype) -> QAMetrics:
        """EM and F1 of the best spans of `model` over every question of `split`."""
        answers = predict_answers(model, data, split, model.max_answer_tokens, 64, device, dtype)
        golds = [e.answers for e in data.examples[split]]
        return qa_metrics([a for a, _ in answers], golds)

    def save(self, model, run_dir: Path, tokenizer, info: dict) -> tuple[str, ...]:
        save_span_extractor(model, run_dir, tokenizer, info)
        return ("model.safetensors", "head.safetensors")

    def report(self, setup, metrics) -> list[str]:
        data: QABatches = setup.data
        val, test = metrics["val"], metrics["test"]
        base_em, base_f1 = first_word_baseline(data, "test")
        lines = [
            "| | validation | test |",
            "|---|---|---|",
            f"| exact match | {val.exact_match:.4f} | {test.exact_match:.4f} |",
            f"| F1 | {val.f1:.4f} | {test.f1:.4f} |",
            f"| questions | {val.count:,} | {test.count:,} |",
            f"| answers cut off by the window (still scored) | {data.cut('val'):,} "
            f"| {data.cut('test'):,} |",
            "",
            f"Trivial baseline (always the context's first word; on shakespeare-speakers the first "
            f"speaker): test EM {base_em:.4f}, F1 {base_f1:.4f}. Training questions dropped "
            f"because their answer did not fit {data.max_length} tokens: {data.dropped:,}.",
            "",
            "| test question | gold | predicted |",
            "|---|---|---|",
        ]
        examples = data.examples["test"][:REPORT_EXAMPLES]
        for example, predicted in zip(examples, test.predictions):
            cells = [example.question, " / ".join(example.answers), predicted]
            lines.append("| " + " | ".join(table_cell(c, 80) for c in cells) + " |")
        return lines

    def describe_data(self, setup) -> list[str]:
        data: QABatches = setup.data
        return [
            f"- question and context framed as the family reads a pair, cut to "
            f"{data.max_length} tokens (the question to half of them; no sliding window); "
            f"answers of at most {setup.model.max_answer_tokens} tokens"
        ]
