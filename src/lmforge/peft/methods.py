"""Fine-tuning methods: each prepares a model in place, by freezing and by wrapping or replacing
modules, never by subclassing it.

A method is a `Method`: a name, `prepare(model, cfg, tokenizer)`, which sets `requires_grad` on
the model a task built (for classification a `SequenceClassifier`: `backbone` + `head`; for a
generation task the backbone itself) and returns the model to train, and a few facts the recipe
acts on. The recipe (recipes/finetune.py) then trains whatever is trainable with the shared loop
(train/loop.py), so a new method is one function and one entry in `METHODS`.

- `full`: every parameter the task runs is trained (parameters it never runs, such as an LM head
  or T5's decoder under a classifier, stay frozen so the counts say what is really trained).
- `feature` (feature-based transfer; Peters et al., 2019, "To Tune or Not to Tune?"; the linear
  probe of Radford et al., 2021, CLIP, section 3.2): the backbone is frozen and run once; its pooled
  features of every example are cached in memory and only the head is trained on them,
  standardized (peft/standardize.py). A step then costs one small matrix product instead of a
  forward and backward pass through the model, so the defaults train longer at a higher rate.
- `lora` (Hu et al., 2021; peft/lora.py): low-rank adapters wrap the linear layers named by
  `lora.targets`; they (and a task head) train.
- `qlora` (Dettmers et al., 2023; peft/qlora.py, nf4.py): LoRA over a base loaded in 4-bit NF4,
  quantized while it is read (`Method.load`); `qlora.double_quant` quantizes the scales too.
- `adapter` (Houlsby et al., 2019; peft/bottleneck.py): bottleneck adapters after every attention
  block and MLP; they, the layer norms (`adapter.train_norms`) and a task head train.
- `prompt` (Lester et al., 2021; peft/prompt.py): a soft prompt of `prompt.num_tokens` virtual
  tokens before the input; it (and a task head) trains. Decoders only.

Every parameter-efficient method saves what it trained alone (adapter.safetensors, adapter.json
with the base's fingerprint: peft/adapter_files.py), from its `adapter_settings`. Before the task
saves the model, `finalize` makes it a plain one: LoRA merges its adapters (QLoRA into the
dequantized base, the weights it was trained and evaluated with); Houlsby adapters and soft
prompts cannot be merged, so they are taken off and the saved model directory is the base with the
adapter beside it, which `load_model` rebuilds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lmforge.data.classification import FeatureBatches, TokenBatches, pad_right
from lmforge.device import autocast, resolve_device, resolve_precision
from lmforge.errors import UserError
from lmforge.peft.adapter_files import remove_adapters
from lmforge.peft.bottleneck import adapter_targets, apply_adapters, norm_modules
from lmforge.peft.lora import apply_lora, merge_lora
from lmforge.peft.nf4 import BLOCK, dequantize_linears
from lmforge.peft.prompt import PromptTuned, initial_prompt, require_decoder
from lmforge.peft.qlora import load_quantized


@dataclass(frozen=True)
class Method:
    name: str
    prepare: Callable[[nn.Module, Any, Any], nn.Module]
    """(model built by the task, the run's config, tokenizer) -> the model to train: the same
    model, frozen and wrapped in place, or a wrapper around it (prompt tuning of a model without a
    head, `PromptTuned`)."""
    description: str
    cached_features: bool = False
    """The backbone is frozen and deterministic: compute its pooled features once, train the head."""
    train_defaults: dict = field(default_factory=dict)
    """Train-section defaults that suit the method (the run's own values win)."""
    load: Callable[[str, Any], tuple] | None = None
    """(model source, the run's config) -> (model, tokenizer), where the method loads the base its
    own way (QLoRA: quantized while it is read); None: as every command loads it."""
    adapter_settings: Callable[[Any], dict] | None = None
    """The run's config -> the adapter.json settings of what the method trained, saved alone
    (peft/adapter_files.py); None: nothing to save alone."""
    finalize: Callable[[nn.Module], nn.Module] | None = None
    """The trained model -> a plain one to save (see the module docstring)."""


def backbone_of(model: nn.Module) -> nn.Module:
    """The pre-trained model inside a task model (`backbone`), or the model itself."""
    return getattr(model, "backbone", model)


def _train_head(model: nn.Module) -> None:
    """Train the task's head, if it has one; keep what the task never runs frozen."""
    if hasattr(model, "head"):
        model.head.requires_grad_(True)
    for p in getattr(model, "unused_parameters", list)():
        p.requires_grad_(False)


def prepare_full(model: nn.Module, cfg: Any = None, tokenizer: Any = None) -> nn.Module:
    """Train everything the model runs."""
    model.requires_grad_(True)
    for p in getattr(model, "unused_parameters", list)():
        p.requires_grad_(False)
    return model


def prepare_feature(model: nn.Module, cfg: Any = None, tokenizer: Any = None) -> nn.Module:
    """Freeze the backbone; train only the head."""
    if not hasattr(model, "backbone") or not hasattr(model, "head"):
        raise UserError("the feature method needs a task with a head (classify, tag or qa)")
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    return model


def prepare_lora(model: nn.Module, cfg: Any, tokenizer: Any = None) -> nn.Module:
    """Freeze everything, wrap the backbone's target layers in LoRA adapters (trainable), and
    train the task's head if it has one. `cfg.lora`: rank, alpha, dropout, targets."""
    lora = cfg.lora
    model.requires_grad_(False)
    apply_lora(backbone_of(model), lora.targets, lora.rank, lora.alpha, lora.dropout)
    _train_head(model)
    return model


def prepare_adapter(model: nn.Module, cfg: Any, tokenizer: Any = None) -> nn.Module:
    """Freeze everything, put bottleneck adapters (trainable) after the attention blocks and
    MLPs of the layers `cfg.adapter.layers` (default all), train the layer norms if
    `cfg.adapter.train_norms`, and the task's head."""
    settings = cfg.adapter
    model.requires_grad_(False)
    backbone = backbone_of(model)
    apply_adapters(backbone, adapter_targets(backbone, settings.layers), settings.bottleneck)
    if settings.train_norms:
        for norm in norm_modules(backbone):
            norm.requires_grad_(True)
    _train_head(model)
    return model


def prepare_prompt(model: nn.Module, cfg: Any, tokenizer: Any = None) -> nn.Module:
    """Freeze everything, put a soft prompt (trainable) before the backbone's input, and train
    the task's head. A model without a head comes back wrapped (`PromptTuned`)."""
    settings = cfg.prompt
    backbone = backbone_of(model)
    require_decoder(backbone)
    model.requires_grad_(False)
    init = initial_prompt(
        backbone, settings.num_tokens, settings.init, settings.text, tokenizer, cfg.train.seed
    )
    tuned = PromptTuned(backbone, init)
    if backbone is model:
        return tuned
    model.backbone = tuned
    _train_head(model)
    return model


def load_qlora_base(source: str, cfg: Any):
    """The base with its linear layers in NF4, quantized while read, dequantized for compute in
    the run's precision."""
    dtype = resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))
    return load_quantized(source, cfg.qlora.double_quant, dtype)


def merge_and_dequantize(model: nn.Module) -> nn.Module:
    """QLoRA's plain model: the adapters merged into the dequantized base, every other NF4
    layer dequantized too."""
    return dequantize_linears(merge_lora(model))


def lora_settings(cfg: Any) -> dict:
    lora = cfg.lora
    return {
        "rank": lora.rank,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "targets": list(lora.targets),
    }


def qlora_settings(cfg: Any) -> dict:
    quantization = {"format": "nf4", "block_size": BLOCK, "double_quant": cfg.qlora.double_quant}
    return {**lora_settings(cfg), "base_quantization": quantization}


def adapter_settings(cfg: Any) -> dict:
    a = cfg.adapter
    return {
        "bottleneck": a.bottleneck,
        "layers": list(a.layers),
        "train_norms": a.train_norms,
        "activation": "gelu",
    }


def prompt_settings(cfg: Any) -> dict:
    p = cfg.prompt
    return {"num_tokens": p.num_tokens, "init": p.init, "text": p.text}


_PEFT_DEFAULTS = {"lr": 1e-3, "min_lr": 1e-4, "weight_decay": 0.0}
METHODS: dict[str, Method] = {
    "full": Method(
        "full",
        prepare_full,
        "every parameter trained",
        train_defaults={"lr": 5e-5, "min_lr": 5e-6, "weight_decay": 0.01},
    ),
    "feature": Method(
        "feature",
        prepare_feature,
        "backbone frozen and run once (features cached), head trained",
        cached_features=True,
        train_defaults={"lr": 1e-2, "min_lr": 1e-3, "weight_decay": 0.0, "max_steps": 2000},
    ),
    "lora": Method(
        "lora",
        prepare_lora,
        "low-rank adapters on the target layers trained, the rest frozen",
        train_defaults=_PEFT_DEFAULTS,
        adapter_settings=lora_settings,
        finalize=merge_lora,
    ),
    "qlora": Method(
        "qlora",
        prepare_lora,
        "low-rank adapters trained over a frozen base stored in 4-bit NF4",
        train_defaults=_PEFT_DEFAULTS,
        load=load_qlora_base,
        adapter_settings=qlora_settings,
        finalize=merge_and_dequantize,
    ),
    "adapter": Method(
        "adapter",
        prepare_adapter,
        "bottleneck adapters after every attention block and MLP trained, the rest frozen",
        train_defaults=_PEFT_DEFAULTS,
        adapter_settings=adapter_settings,
        finalize=remove_adapters,
    ),
    "prompt": Method(
        "prompt",
        prepare_prompt,
        "a soft prompt of virtual tokens before the input trained, the model frozen",
        train_defaults={**_PEFT_DEFAULTS, "lr": 3e-2, "min_lr": 3e-3, "head_lr": 1e-3},
        adapter_settings=prompt_settings,
        finalize=remove_adapters,
    ),
}
"""Method name -> Method."""


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
