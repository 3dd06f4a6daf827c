"""Token classification (tagging) on any model family, by wrapping the model (never subclassing it).

A `TokenClassifier` holds a `backbone` (a GPT, Bert or T5 exactly as `load_model` returns it) and
a `head`: dropout then one linear layer from each token's final hidden state to one logit per tag,
as BERT's named-entity tagger (Devlin et al., 2019, section 5.3: "we feed the final hidden
representation of each token into a classification layer over the NER label set"; Hugging Face
`BertForTokenClassification`). The hidden states are the family's, as models/heads.py takes them
(`HIDDEN_STATES`):

- bert: the encoder's final hidden states (bidirectional: a token sees the whole sentence);
- gpt: the decoder's causal hidden states (`decoder_hidden`): a token has read only the words
  before it and its own first piece, so a tag is predicted from left context alone;
- t5: the encoder's hidden states (`t5_encoder_hidden`); the decoder is not run.

The head is models/heads.py's `ClassificationHead` applied at every position (N(0, 0.02) weights,
zero bias). Parameters the tagger never runs (the LM heads, BERT's pooler, T5's decoder) are
listed by `unused_parameters()` (heads.py `BackboneWithHead`), so fine-tuning methods
leave them frozen and parameter counts are honest. `tagger.json` beside the backbone's model
directory records the tag names and how the tagger was made; the head's weights are
`head.safetensors` (`save_tagger` / `load_token_classifier`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmforge.models.heads import (
    HIDDEN_STATES,
    PER_TOKEN_UNUSED_MODULES,
    BackboneWithHead,
    ClassificationHead,
    head_dropout,
    load_head,
    read_head_info,
    save_backbone_and_head,
)
from lmforge.models.loading import load_model

TAGGER_FILE = "tagger.json"
"""Beside config.json: that the directory is a tagger, its tag names and how it was made."""


class TokenClassifier(BackboneWithHead):
    """A backbone of any family plus a per-token head: (input_ids, attention_mask) -> tag logits
    (B, T, num_tags)."""

    unused_modules = PER_TOKEN_UNUSED_MODULES

    def __init__(
        self,
        backbone: nn.Module,
        num_tags: int,
        dropout: float = 0.0,
        tags: list[str] | None = None,
    ) -> None:
        super().__init__(backbone, "token classification")
        self.head = ClassificationHead(backbone.config.hidden_size, num_tags, dropout)
        self.tags = list(tags) if tags is not None else [str(i) for i in range(num_tags)]
        if len(self.tags) != num_tags:
            raise ValueError(f"{len(self.tags)} tag names for {num_tags} tags")

    @property
    def num_tags(self) -> int:
        return self.head.num_labels

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states (B, T, C) of token ids (B, T); attention_mask (B, T), 1 = token."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return HIDDEN_STATES[self.family](self.backbone, input_ids, attention_mask)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tag logits (B, T, num_tags) of token ids (B, T)."""
        return self.head(self.hidden_states(input_ids, attention_mask))


def save_tagger(
    model: TokenClassifier, directory: str | Path, tokenizer=None, info: dict | None = None
) -> Path:
    """Write the backbone as a model directory, plus head.safetensors and tagger.json (tag names
    and `info`: method, data, max_length, ...)."""
    meta = {
        "task": "tag",
        "family": model.family,
        "num_tags": model.num_tags,
        "tags": model.tags,
        "dropout": head_dropout(model.head),
        **(info or {}),
    }
    return save_backbone_and_head(model, directory, tokenizer, TAGGER_FILE, meta)


def _check_tagger_info(info: dict) -> None:
    num_tags, tags = int(info["num_tags"]), [str(t) for t in info["tags"]]
    if len(tags) != num_tags:
        raise ValueError("tag names do not match num_tags")


def read_tagger_info(directory: str | Path) -> dict:
    """tagger.json of a fine-tuned tagger directory (`UserError` when it is not one)."""
    return read_head_info(directory, TAGGER_FILE, "tagger", "tag", _check_tagger_info)


def load_token_classifier(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[TokenClassifier, dict]:
    """(tagger in eval mode, tagger.json) from a directory written by `save_tagger`."""
    info = read_tagger_info(directory)
    backbone = load_model(directory)
    model = TokenClassifier(backbone, int(info["num_tags"]), 0.0, [str(t) for t in info["tags"]])
    load_head(model, directory)
    return model.to(device).eval(), info
