"""Fine-tuning methods: each prepares a model in place, by freezing (and, for the parameter-efficient
methods of the roadmap, by wrapping or replacing modules), never by subclassing it.

A method is a `Method`: a name, `prepare(model, cfg)`, which sets `requires_grad` on the model a
task built (for classification a `SequenceClassifier`: `backbone` + `head`), and a few facts the
recipe acts on. The recipe (recipes/finetune.py) then trains whatever is trainable with the shared
loop (train/loop.py), so a new method is one function and one entry in `METHODS`.

- `full`: every parameter the task runs is trained (parameters it never runs, such as an LM head
  or T5's decoder under a classifier, stay frozen so the counts say what is really trained).
- `lora` (Hu et al., 2021; peft/lora.py): the model is frozen and low-rank adapters wrap the
  linear layers named by `lora.targets`; the adapters (and a task head) train. The run saves the
  adapters alone (adapter.safetensors, adapter.json with the base's fingerprint) and the model
  with the adapters merged into its weights: a plain model that every command loads.
- `feature` (feature-based transfer; Peters et al., 2019, "To Tune or Not to Tune?"; the linear
  probe of Radford et al., 2021, CLIP, section 3.2): the backbone is frozen and run once; its pooled
  features of every example are cached in memory and only the head is trained on them. A step
  then costs one small matrix product instead of a forward and backward pass through the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lmforge.data.classification import FeatureBatches, TokenBatches, pad_right
from lmforge.device import autocast
from lmforge.errors import UserError
from lmforge.peft.adapter_files import save_adapter
from lmforge.peft.lora import apply_lora, merge_lora


@dataclass(frozen=True)
class Method:
    name: str
    prepare: Callable[[nn.Module, Any], None]
    """(model built by the task, the run's config) -> None: freezes / wraps in place."""
    description: str
    cached_features: bool = False
    """The backbone is frozen and deterministic: compute its pooled features once, train the head."""
    train_defaults: dict = field(default_factory=dict)
    """Train-section defaults that suit the method (the run's own values win)."""
    save_alone: Callable[[nn.Module, Path, Any], None] | None = None
    """(trained model, run directory, the run's config): writes what the method trained on its
    own, loadable onto the base (LoRA: peft/adapter_files.py)."""
    finalize: Callable[[nn.Module], None] | None = None
    """Turns the trained model into a plain one before it is saved (LoRA merges its adapters)."""


def prepare_full(model: nn.Module, cfg: Any = None) -> None:
    """Train everything the model runs."""
    model.requires_grad_(True)
    for p in getattr(model, "unused_parameters", list)():
        p.requires_grad_(False)


def prepare_feature(model: nn.Module, cfg: Any = None) -> None:
    """Freeze the backbone; train only the head."""
    if not hasattr(model, "backbone") or not hasattr(model, "head"):
        raise UserError("the feature method needs a task with a head (classify, tag or qa)")
    model.requires_grad_(False)
    model.head.requires_grad_(True)


def prepare_lora(model: nn.Module, cfg: Any) -> None:
    """Freeze everything, wrap the backbone's target layers in LoRA adapters (trainable), and
    train the task's head if it has one. `cfg.lora`: rank, alpha, dropout, targets."""
    lora = cfg.lora
    model.requires_grad_(False)
    apply_lora(getattr(model, "backbone", model), lora.targets, lora.rank, lora.alpha, lora.dropout)
    if hasattr(model, "head"):
        model.head.requires_grad_(True)


def save_lora_adapter(model: nn.Module, run_dir: Path, cfg: Any) -> None:
    """adapter.safetensors + adapter.json of the backbone's LoRA adapters, in the run directory."""
    lora = cfg.lora
    settings = {"rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout}
    settings |= {"targets": list(lora.targets), "base_model": str(cfg.model)}
    save_adapter(getattr(model, "backbone", model), run_dir, settings)


METHODS: dict[str, Method] = {
    "full": Method(
        "full",
        prepare_full,
        "every parameter trained",
        train_defaults={"lr": 5e-5, "min_lr": 5e-6, "weight_decay": 0.01},
    ),
    "lora": Method(
        "lora",
        prepare_lora,
        "low-rank adapters on the target layers trained, the rest frozen",
        train_defaults={"lr": 1e-3, "min_lr": 1e-4, "weight_decay": 0.0},
        save_alone=save_lora_adapter,
        finalize=merge_lora,
    ),
    "feature": Method(
        "feature",
        prepare_feature,
        "backbone frozen and run once (features cached), head trained",
        cached_features=True,
        train_defaults={"lr": 1e-3, "min_lr": 1e-4, "weight_decay": 0.0, "max_steps": 1000},
    ),
}
"""Method name -> Method. Adapters, QLoRA and prompt tuning join here (roadmap item 3)."""


@torch.no_grad()
def cache_features(
    model: nn.Module,
    data: TokenBatches,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 64,
    show_progress: bool = True,
) -> FeatureBatches:
    """The feature method's data: the pooled backbone features (N, C) of every example of every
    split, computed once (fp32, on the CPU), with the labels.

    Rows are batched in order of length, so each batch pads little; features go back to their
    rows' places."""
    model.to(device).eval()
    splits = list(data.ids)
    total = sum(-(-len(data.ids[s]) // batch_size) for s in splits)
    bar = tqdm(total=total, desc="features", unit="batch", disable=not show_progress)
    features = {}
    for split in splits:
        rows = data.ids[split]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = torch.empty(len(rows), model.backbone.config.hidden_size)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            ids, mask = pad_right([rows[i] for i in index], data.pad_id)  # (B, T) each
            with autocast(device, dtype):
                pooled = model.features(ids.to(device), mask.to(device))  # (B, C)
            out[index] = pooled.float().cpu()
            bar.update(1)
        features[split] = out
    bar.close()
    return FeatureBatches(features, data.labels)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown fine-tuning method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
