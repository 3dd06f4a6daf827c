"""Fine-tuning methods that prepare a model in place (methods.py): `full`, `feature`, `lora`,
`qlora`, `adapter` and `prompt`, by freezing and by wrapping or replacing modules, never by
subclassing the model.

    lora.py           low-rank adapters around linear layers (Hu et al., 2021)
    nf4.py, qlora.py  4-bit NormalFloat layers, and a base quantized while it is read (QLoRA)
    bottleneck.py     Houlsby bottleneck adapters after attention and MLP (Houlsby et al., 2019)
    prompt.py         a soft prompt of virtual tokens before the input (Lester et al., 2021)
    adapter_files.py  every kind of adapter saved alone with its base's fingerprint, loaded back
    standardize.py    the feature method's head trained on standardized features, then folded
"""

from lmforge.peft.adapter_files import (
    load_adapter,
    load_adapter_merged,
    remove_adapters,
    save_adapter,
)
from lmforge.peft.bottleneck import WithAdapter, apply_adapters
from lmforge.peft.lora import LoRALinear, apply_lora, merge_lora
from lmforge.peft.methods import (
    METHODS,
    Method,
    cache_features,
    get_method,
    prepare_feature,
    prepare_full,
)
from lmforge.peft.nf4 import NF4Linear
from lmforge.peft.prompt import PromptTuned
from lmforge.peft.qlora import load_quantized
from lmforge.peft.standardize import StandardizedHead

__all__ = [
    "METHODS",
    "LoRALinear",
    "Method",
    "NF4Linear",
    "PromptTuned",
    "StandardizedHead",
    "WithAdapter",
    "apply_adapters",
    "apply_lora",
    "cache_features",
    "get_method",
    "load_adapter",
    "load_adapter_merged",
    "load_quantized",
    "merge_lora",
    "prepare_feature",
    "prepare_full",
    "remove_adapters",
    "save_adapter",
]
