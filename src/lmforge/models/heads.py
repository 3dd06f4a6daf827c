"""Sequence classification on any model family, by wrapping the model (never by subclassing it).

A `SequenceClassifier` holds a `backbone` (a GPT, Bert or T5 exactly as `load_model` returns it)
and a `head`. The family gives the final hidden states of a padded batch (`HIDDEN_STATES`), and a
pooling makes one vector per sequence of them (`POOLINGS`: `last`, `mean`, `cls`); by default
(`DEFAULT_POOLING`):

- decoder (GPT, Llama): the final hidden state of the last real (non-pad) token, the only position
  that has seen the whole text under causal attention (GPT-1's "extract" token, Radford et al.,
  2018, section 3.3; Hugging Face `GPT2ForSequenceClassification` / `LlamaForSequenceClassification`).
  Padding may be on either side: a padded batch gives each row its own positions from its first
  real token and a mask that hides padding keys, so a row pools exactly what it would alone.
- encoder (BERT): the pooler, tanh(W_p h_[CLS] + b_p) (Devlin et al., 2019, section 4.1;
  `BertForSequenceClassification`). [CLS] must be the first token: BERT batches pad on the right.
- encoder-decoder (T5): the mean of the encoder's final hidden states over the real tokens (the
  "mean" encoder strategy of Sentence-T5, Ni et al., 2022); the decoder is not run.

`mean` works on every family (for decoders it is the pooling of SGPT, Muennighoff, 2022, and a
stronger feature for a frozen decoder that was never trained to summarise at its last token).

The head is dropout then one linear layer to `num_labels` logits, N(0, 0.02) weights and zero bias
(as Hugging Face initialises its classifiers). Parameters that the classifier never runs (the LM
heads, T5's decoder) are listed by `unused_parameters()`, so fine-tuning methods leave them frozen
and parameter counts show what is really trained. `classifier.json` beside the backbone's model
directory records the head's shape and label names (`save_classifier` / `load_sequence_classifier`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.fileio import write_json_atomic
from lmforge.models import registry
from lmforge.models.loading import (
    load_model,
    load_model_state,
    load_safetensors,
    model_state,
    save_model,
    save_safetensors,
    tied_names,
)

CLASSIFIER_FILE = "classifier.json"
"""Beside config.json: head shape, label names and how the classifier was made."""
HEAD_FILE = "head.safetensors"
"""Beside model.safetensors: the classification head's weights."""

HiddenStates = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""(backbone, input_ids (B, T), attention_mask (B, T)) -> final hidden states (B, T, C)."""
Pooling = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""(backbone, hidden states (B, T, C), attention_mask (B, T)) -> one vector per sequence (B, C)."""


def decoder_hidden(
    backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Decoder hidden states of a batch padded on either side: each row gets positions 0, 1, ...
    from its first real token and a causal mask over its real keys, as if it ran alone."""
    T = input_ids.size(1)
    real = attention_mask.bool()  # (B, T)
    positions = mask = None
    if not bool(real.all()):
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)  # (B, T): 0, 1, ... from the text
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
        mask = causal[None] & real[:, None, :]  # (B, T, T): earlier real keys only
        mask = (mask | ~real[:, :, None])[:, None]  # (B, 1, T, T): pad queries see all (unused)
    return backbone(input_ids, positions=positions, mask=mask, return_hidden=True)  # (B, T, C)


def encoder_hidden(
    backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """BERT's final hidden states; padding keys are masked out."""
    return backbone(input_ids, attention_mask=attention_mask, return_hidden=True)  # (B, T, C)


def t5_encoder_hidden(
    backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """T5's encoder output (the decoder is not run)."""
    return backbone.encode(input_ids, attention_mask)  # (B, T, C)


HIDDEN_STATES: dict[str, HiddenStates] = {
    "gpt": decoder_hidden,
    "bert": encoder_hidden,
    "t5": t5_encoder_hidden,
}
"""Model family -> its final hidden states for a padded batch."""


def last_token_pool(
    backbone: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The hidden state of each row's last real token, whichever side the padding is on."""
    B, T = attention_mask.shape
    last = T - 1 - attention_mask.bool().flip(-1).long().argmax(-1)  # (B,): last real index
    return hidden[torch.arange(B, device=hidden.device), last]  # (B, C)


def mean_pool(
    backbone: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The mean of the hidden states over each row's real tokens."""
    weights = attention_mask.to(hidden.dtype)[:, :, None]  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, C)


def cls_pool(
    backbone: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """BERT's pooler: tanh(W_p h_[CLS] + b_p), [CLS] being the first token."""
    return backbone.pooler(hidden)  # (B, C)


POOLINGS: dict[str, Pooling] = {"last": last_token_pool, "mean": mean_pool, "cls": cls_pool}
"""Pooling name -> how hidden states become one vector per sequence."""

DEFAULT_POOLING: dict[str, str] = {"gpt": "last", "bert": "cls", "t5": "mean"}
"""Model family -> its pooling unless the head config names another (`auto`)."""

UNUSED_MODULES: dict[str, tuple[str, ...]] = {
    "gpt": ("lm_head",),
    "bert": ("mlm_head",),
    "t5": ("decoder", "lm_head"),
}
"""Model family -> backbone modules a classifier never runs (tied weights stay in use)."""


def unused_backbone_parameters(backbone: nn.Module, modules: tuple[str, ...]) -> list[nn.Parameter]:
    """Parameters of `backbone` reachable only through `modules` (a tensor that a used module
    shares, such as tied embeddings, stays in use): what a head on the backbone never runs."""
    prefixes = tuple(f"{m}." for m in modules)
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, p in backbone.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        params[id(p)] = p
    return [params[i] for i, ns in names.items() if all(n.startswith(prefixes) for n in ns)]


PER_TOKEN_UNUSED_MODULES: dict[str, tuple[str, ...]] = {
    **UNUSED_MODULES,
    "bert": (*UNUSED_MODULES["bert"], "pooler"),  # per-token states: the pooler is not run
}
"""Model family -> backbone modules a per-token head (tagger, span extractor) never runs."""


class BackboneWithHead(nn.Module):
    """A backbone of any family (exactly as `load_model` returns it) with a task head beside it:
    what the classifier, the tagger (token_heads.py) and the span extractor (span_heads.py) share.

    Subclasses set `head` and name the backbone modules they never run (`unused_modules`); loading
    and checkpointing (models/loading.py, train/checkpoint.py) go through the tie and buffer
    methods below, which defer to the backbone."""

    unused_modules: dict[str, tuple[str, ...]] = UNUSED_MODULES
    """Model family -> backbone modules this wrapper never runs (tied weights stay in use)."""

    def __init__(self, backbone: nn.Module, task: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.family = registry.family_of(backbone).name
        if self.family not in HIDDEN_STATES:
            raise UserError(f"no {task} for {self.family} models yet")

    @property
    def max_length(self) -> int:
        """The longest input the backbone takes (its context)."""
        return self.backbone.config.max_seq_len

    def unused_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters only reachable through modules this wrapper never runs."""
        return unused_backbone_parameters(self.backbone, self.unused_modules.get(self.family, ()))

    def tied_parameter_names(self) -> set[str]:
        return {f"backbone.{n}" for n in tied_names(self.backbone)}

    def tie_weights(self) -> None:
        if hasattr(self.backbone, "tie_weights"):
            self.backbone.tie_weights()

    def reset_buffers(self) -> None:
        if hasattr(self.backbone, "reset_buffers"):
            self.backbone.reset_buffers()


def head_dropout(head: nn.Module) -> float:
    """The dropout probability of a head built with `nn.Dropout` (0 for `nn.Identity`)."""
    return head.dropout.p if isinstance(head.dropout, nn.Dropout) else 0.0


def save_backbone_and_head(
    model: BackboneWithHead, directory: str | Path, tokenizer, info_file: str, meta: dict
) -> Path:
    """Write the backbone as a model directory (`load_model` still loads it alone), the head's
    weights as head.safetensors and `meta` as `info_file` beside them."""
    directory = Path(directory)
    save_model(model.backbone, directory, tokenizer)
    save_safetensors(model_state(model.head), directory / HEAD_FILE, {"format": "pt"})
    write_json_atomic(directory / info_file, meta)
    return directory


def read_head_info(
    directory: str | Path, info_file: str, what: str, task: str, check: Callable[[dict], None]
) -> dict:
    """`info_file` of a fine-tuned `what` directory, made by `lmforge finetune --task TASK`;
    `check(info)` raises on missing or malformed fields. A `UserError` when it is not one, or
    damaged."""
    path = Path(directory) / info_file
    if not path.is_file():
        raise UserError(
            f"{directory} is not a fine-tuned {what} ({info_file} not found); "
            f"make one with `lmforge finetune --task {task}`"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        check(info)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}); fine-tune again") from None
    return info


def load_head(model: BackboneWithHead, directory: str | Path) -> None:
    """Load head.safetensors of `directory` into `model.head`."""
    head_file = Path(directory) / HEAD_FILE
    load_model_state(model.head, load_safetensors(head_file), head_file)


class ClassificationHead(nn.Module):
    """logits = W dropout(features) + b: (B, C) -> (B, num_labels)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_labels < 2:
            raise UserError(f"classification needs at least 2 labels, got {num_labels}")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_proj = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.out_proj.weight, std=0.02)
        nn.init.zeros_(self.out_proj.bias)

    @property
    def num_labels(self) -> int:
        return self.out_proj.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(features))


class SequenceClassifier(BackboneWithHead):
    """A backbone of any family plus a classification head: (input_ids, attention_mask) -> logits."""

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int,
        dropout: float = 0.0,
        labels: list[str] | None = None,
        pooling: str = "auto",
    ) -> None:
        super().__init__(backbone, "sequence classification")
        self.pooling = DEFAULT_POOLING[self.family] if pooling == "auto" else pooling
        if self.pooling not in POOLINGS:
            choices = ", ".join(["auto", *POOLINGS])
            raise UserError(f"unknown pooling {pooling!r}; choose one of: {choices}")
        if self.pooling == "cls" and not hasattr(backbone, "pooler"):
            raise UserError(f"pooling cls needs BERT's pooler; a {self.family} model has none")
        self.head = ClassificationHead(backbone.config.hidden_size, num_labels, dropout)
        self.labels = list(labels) if labels is not None else [str(i) for i in range(num_labels)]
        if len(self.labels) != num_labels:
            raise ValueError(f"{len(self.labels)} label names for {num_labels} labels")

    @property
    def num_labels(self) -> int:
        return self.head.num_labels

    def features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled backbone features (B, C) of token ids (B, T); attention_mask (B, T), 1 = token."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = HIDDEN_STATES[self.family](self.backbone, input_ids, attention_mask)  # (B, T, C)
        return POOLINGS[self.pooling](self.backbone, hidden, attention_mask)  # (B, C)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, num_labels) of token ids (B, T)."""
        return self.head(self.features(input_ids, attention_mask))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor once."""
    unique = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    return trainable, sum(p.numel() for p in unique)


def save_classifier(
    model: SequenceClassifier, directory: str | Path, tokenizer=None, info: dict | None = None
) -> Path:
    """Write the backbone as a model directory, plus head.safetensors and classifier.json
    (head shape, labels, pooling, and `info`: method, data, max_length, ...)."""
    meta = {
        "task": "classify",
        "family": model.family,
        "num_labels": model.num_labels,
        "labels": model.labels,
        "pooling": model.pooling,
        "dropout": head_dropout(model.head),
        **(info or {}),
    }
    return save_backbone_and_head(model, directory, tokenizer, CLASSIFIER_FILE, meta)


def _check_classifier_info(info: dict) -> None:
    int(info["num_labels"]), list(info["labels"])


def read_classifier_info(directory: str | Path) -> dict:
    """classifier.json of a fine-tuned classifier directory (`UserError` when it is not one)."""
    return read_head_info(
        directory, CLASSIFIER_FILE, "classifier", "classify", _check_classifier_info
    )


def load_sequence_classifier(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[SequenceClassifier, dict]:
    """(classifier in eval mode, classifier.json) from a directory written by `save_classifier`."""
    info = read_classifier_info(directory)
    backbone = load_model(directory)
    pooling = str(info.get("pooling", "auto"))
    model = SequenceClassifier(
        backbone, int(info["num_labels"]), 0.0, list(info["labels"]), pooling
    )
    load_head(model, directory)
    return model.to(device).eval(), info
