"""Extractive question answering on any model family, by wrapping the model (never by subclassing it).

A `SpanExtractor` holds a `backbone` (a GPT, Bert or T5 exactly as `load_model` returns it) and a
`head`: one linear layer from each token's final hidden state to two logits, the start and end
scores of the answer span (BERT's SQuAD head, Devlin et al., 2019, section 4.2: a start vector S
and an end vector E, P(start = i) = softmax_i(S . h_i); Hugging Face `*ForQuestionAnswering`'s
`qa_outputs`). The hidden states come from the family, as models/heads.py takes them:

- bert: the encoder over the pair [CLS] question [SEP] context [SEP], with token types 0 for the
  question part and 1 for the context part (the segment embeddings of BERT's sentence pairs);
- gpt: the decoder's causal hidden states of question, separator, context (`decoder_hidden`): a
  context token has read the question and the context before it, not after;
- t5: the encoder's hidden states of "question: ... context: ..." (`t5_encoder_hidden`); the
  decoder is not run.

`mask_outside_context` gives the positions that are not context (question, special tokens,
padding) a logit of -inf-like size, so a softmax puts no probability there: the loss and decoding
(eval/qa.py) both go through it. Dropout (`head.dropout`) acts on the hidden states before the
linear layer; its weights are N(0, 0.02) and its bias zero, as Hugging Face initialises them.

Parameters the extractor never runs (the LM heads, BERT's pooler, T5's decoder) are listed by
`unused_parameters()`, so fine-tuning methods leave them frozen and parameter counts are honest.
When the backbone is wholly frozen (the feature method without cached features), `train()` keeps
it in eval mode so its dropout does not change the features from step to step. `qa.json` beside
the backbone's model directory records the head's shape and how it was made (`save_span_extractor`
/ `load_span_extractor`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.models.heads import (
    HIDDEN_STATES,
    PER_TOKEN_UNUSED_MODULES,
    BackboneWithHead,
    ClassificationHead,
    load_head,
    read_head_info,
    save_backbone_and_head,
)
from lmforge.models.loading import load_model

QA_FILE = "qa.json"
"""Beside config.json: that the directory is a span extractor, and how it was made."""


def bert_pair_hidden(
    backbone: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
) -> torch.Tensor:
    """BERT's final hidden states (B, T, C) of a sentence pair with its segment ids (B, T)."""
    return backbone(input_ids, token_type_ids, attention_mask, return_hidden=True)


def mask_outside_context(logits: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
    """fp32 logits (B, T) with every position outside the context (context_mask False) at the
    lowest float: a softmax over them gives those positions exactly zero probability."""
    return logits.float().masked_fill(~context_mask.bool(), torch.finfo(torch.float32).min)


class SpanExtractor(BackboneWithHead):
    """A backbone of any family plus a span head: token ids -> (start logits, end logits)."""

    unused_modules = PER_TOKEN_UNUSED_MODULES

    def __init__(
        self, backbone: nn.Module, dropout: float = 0.0, max_answer_tokens: int = 30
    ) -> None:
        if max_answer_tokens < 1:
            raise UserError(f"max_answer_tokens must be at least 1, got {max_answer_tokens}")
        super().__init__(backbone, "question answering")
        self.max_answer_tokens = max_answer_tokens
        """Longest answer span decoding considers, in tokens (saved in qa.json)."""
        # (start, end) logits = W dropout(h) + b: (B, T, C) -> (B, T, 2)
        self.head = ClassificationHead(backbone.config.hidden_size, 2, dropout)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The family's final hidden states (B, T, C) of a right-padded batch."""
        if self.family == "bert":
            return bert_pair_hidden(self.backbone, input_ids, attention_mask, token_type_ids)
        return HIDDEN_STATES[self.family](self.backbone, input_ids, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(start logits, end logits), each (B, T), of token ids (B, T); attention_mask (B, T),
        1 = token; token_type_ids (B, T), 0 = question part, 1 = context part (BERT only)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        logits = self.head(hidden)  # (B, T, 2)
        start, end = logits.unbind(-1)  # (B, T) each
        return start, end

    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> SpanExtractor:
        """Train mode, except for a wholly frozen backbone, which stays deterministic."""
        super().train(mode)
        if mode and self.backbone_frozen():
            self.backbone.eval()
        return self


def save_span_extractor(
    model: SpanExtractor, directory: str | Path, tokenizer=None, info: dict | None = None
) -> Path:
    """Write the backbone as a model directory, plus head.safetensors and qa.json (`info`:
    method, data, max_length, ...; and max_answer_tokens)."""
    meta = {
        "task": "qa",
        "family": model.family,
        "max_answer_tokens": model.max_answer_tokens,
        **(info or {}),
    }
    return save_backbone_and_head(model, directory, tokenizer, QA_FILE, meta)


def _check_qa_info(info: dict) -> None:
    if info.get("task") != "qa":
        raise ValueError("not a qa model")
    info["max_answer_tokens"] = int(info.get("max_answer_tokens", 30))


def read_qa_info(directory: str | Path) -> dict:
    """qa.json of a fine-tuned question-answering directory (`UserError` when it is not one)."""
    return read_head_info(directory, QA_FILE, "question-answering model", "qa", _check_qa_info)


def load_span_extractor(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[SpanExtractor, dict]:
    """(extractor in eval mode, qa.json) from a directory written by `save_span_extractor`."""
    info = read_qa_info(directory)
    model = SpanExtractor(load_model(directory), 0.0, info["max_answer_tokens"])
    load_head(model, directory)
    return model.to(device).eval(), info
