"""Fine-tuning methods that prepare a model in place (methods.py): `full`, `feature` and `lora`
(lora.py: low-rank adapters wrapped around linear layers; adapter_files.py: adapters saved alone).
nf4.py stores frozen linear layers in 4-bit NormalFloat, the base of QLoRA. The `qlora`, adapter
and prompt-tuning methods, by replacing modules, are on the roadmap."""

from lmforge.peft.adapter_files import load_adapter, save_adapter
from lmforge.peft.lora import LoRALinear, apply_lora, merge_lora
from lmforge.peft.methods import (
    METHODS,
    Method,
    cache_features,
    get_method,
    prepare_feature,
    prepare_full,
)

__all__ = [
    "METHODS",
    "LoRALinear",
    "Method",
    "apply_lora",
    "cache_features",
    "get_method",
    "load_adapter",
    "merge_lora",
    "prepare_feature",
    "prepare_full",
    "save_adapter",
]
