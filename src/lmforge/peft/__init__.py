"""Fine-tuning methods that prepare a model in place (methods.py): `full` and `feature` today;
LoRA, adapters, QLoRA and prompt tuning, by replacing modules, on the roadmap."""

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
    "Method",
    "cache_features",
    "get_method",
    "prepare_feature",
    "prepare_full",
]
