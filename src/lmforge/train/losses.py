"""Training objectives as pure functions: loss = objective(model, batch).

An objective takes the model and one batch and returns the mean loss over the predicted tokens.
The training loop is given one; `make_objective(name, tokenizer, model_config, train_config)` builds
it by name from `OBJECTIVES`, whose entries are builders: objectives that need the tokenizer's
special tokens (masked-LM's [MASK], span corruption's sentinels) or options from the run's train
section bind them there, so the objective itself stays a pure function of (model, batch).

causal_lm: next-token cross-entropy, L = -1/N sum_t log p(x_{t+1} | x_{<=t}) (Radford et al., 2018),
computed from the final hidden states by the fused output-layer cross-entropy of fused_ce.py.
Targets equal to IGNORE_INDEX (-100) do not count.

mlm: masked-language-model cross-entropy over 15% selected tokens (Devlin et al., 2019): train/mlm.py.
span: T5's span corruption, cross-entropy over the dropped spans (Raffel et al., 2020): train/span.py.

classification_loss (fine-tuning, recipes/finetune.py): cross-entropy of one label per sequence,
L = -1/B sum_b log softmax(logits_b)[y_b].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import UserError
from lmforge.train.fused_ce import linear_cross_entropy
from lmforge.train.mlm import build_mlm_objective
from lmforge.train.span import build_span_objective

Batch = tuple[torch.Tensor, torch.Tensor]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def causal_lm_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean cross-entropy of predicting targets y (B, T) from inputs x (B, T).

    A packed batch (x, y, positions, mask) also gives each token's position (B, T) within its own
    sequence and the block-diagonal causal mask (B, 1, T, T) that keeps the sequences of a row
    apart (data/sft.py)."""
    x, y, *packing = batch
    positions, mask = packing or (None, None)
    hidden = model(x, positions=positions, mask=mask, return_hidden=True)  # (B, T, C)
    return linear_cross_entropy(hidden, unwrap(model).lm_head.weight, y)


def classification_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean cross-entropy of the labels (B,), the last tensor of the batch, given the others:
    (input_ids, attention_mask) for a `SequenceClassifier`, or pooled features for a head alone."""
    *inputs, labels = batch
    logits = model(*inputs)  # (B, num_labels)
    return F.cross_entropy(logits.float(), labels)


Objective = Callable[[nn.Module, Batch], torch.Tensor]
ObjectiveBuilder = Callable[[Any, Any, Any], Objective]  # (tokenizer, model_config, train_config)

OBJECTIVES: dict[str, ObjectiveBuilder] = {
    "causal_lm": lambda tokenizer, model_config, train_config: causal_lm_loss,
    "mlm": build_mlm_objective,  # masked LM (BERT): train/mlm.py
    "span": build_span_objective,  # span corruption (T5): train/span.py
}
"""Objective name -> builder. A model family lists the objectives it trains with (models/registry.py)."""


def make_objective(name: str, tokenizer, model_config, train_config) -> Objective:
    """The objective `name`, bound to the tokenizer's special tokens and the run's options."""
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](tokenizer, model_config, train_config)
