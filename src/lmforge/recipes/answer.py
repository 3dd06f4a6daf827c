"""`lmforge answer --model RUN --question ... --context ...`: extract the answer to a question from
a context with a span extractor from `lmforge finetune --task qa`.

    lmforge answer --model runs/speakers-qa --question "Who speaks after Hor?" \
        --context $'Hor.\\nWhat, has this thing appear\\'d again to-night?\\nBer.\\nI have seen nothing.'

prints the answer and its score (the span's probability, softmax(start) x softmax(end) over the
context tokens), tab-separated. From Python, `load_answerer(RUN)` returns an `Answerer`: calling it
on (question, context) gives (answer, score). The pair is framed and truncated exactly as in
fine-tuning (data/qa.py): a context longer than the model's window loses its end, and the answer
is the best span of at most `max_answer_tokens` tokens (qa.json) in what is left (eval/qa.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.qa import QAExample, encode_examples, qa_framing, span_text
from lmforge.device import resolve_device
from lmforge.errors import UserError
from lmforge.eval.qa import best_spans
from lmforge.models.span_heads import SpanExtractor, load_span_extractor
from lmforge.tokenizer import Tokenizer


@dataclass
class AnswerConfig:
    model: str
    """Run directory of `lmforge finetune --task qa`."""
    question: str
    context: str
    device: str = "auto"
    """auto, cpu, cuda or mps."""


class Answerer:
    """(question, context) in, (answer, score) out: a `SpanExtractor` with its tokenizer."""

    def __init__(self, model: SpanExtractor, tokenizer: Tokenizer, max_length: int) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.framing = qa_framing(model.family, tokenizer, model.backbone.config)
        self.max_length = min(max_length, model.max_length)
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, question: str, context: str) -> tuple[str, float]:
        if not question.strip() or not context.strip():
            raise UserError("give a question and a context, neither empty")
        example = QAExample(question, context, (), ())
        (encoded,) = encode_examples([example], self.tokenizer, self.framing, self.max_length)
        ids = torch.from_numpy(encoded.input_ids)[None].to(self.device)  # (1, T)
        types = torch.from_numpy(encoded.token_type_ids)[None].to(self.device)  # (1, T)
        context_mask = torch.zeros_like(ids, dtype=torch.bool)  # (1, T)
        context_mask[0, encoded.context_start : encoded.context_start + len(encoded.offsets)] = True
        start_logits, end_logits = self.model(ids, torch.ones_like(ids), types)
        limit = self.model.max_answer_tokens
        (start,), (end,), (score,) = best_spans(start_logits, end_logits, context_mask, limit)
        return span_text(example, encoded, int(start), int(end)), float(score)


def load_answerer(directory: str | Path, device: str | torch.device = "cpu") -> Answerer:
    """The span extractor saved by `lmforge finetune --task qa` in `directory`."""
    directory = Path(directory)
    if not directory.exists():
        raise UserError(f"model not found: {directory}; pass a `lmforge finetune --task qa` run")
    model, info = load_span_extractor(directory, device)
    tokenizer = Tokenizer.from_file(directory)
    return Answerer(model, tokenizer, int(info.get("max_length", model.max_length)))


def main(cfg: AnswerConfig, out=None) -> tuple[str, float]:
    out = out or sys.stdout
    answerer = load_answerer(cfg.model, resolve_device(cfg.device))
    answer, score = answerer(cfg.question, cfg.context)
    out.write(f"{answer}\t{score:.4f}\n")
    out.flush()
    return answer, score
