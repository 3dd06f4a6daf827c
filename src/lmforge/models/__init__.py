"""Model families: decoder-only GPT/Llama (gpt.py, shapes in presets.py), BERT (bert.py) and T5
(t5.py); registry.py maps a config's family and any preset name to them; loading.py saves and loads
model directories (config.json + model.safetensors + tokenizer.json) of every family."""

from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.presets import PRESETS
from lmforge.models.registry import get_preset

__all__ = ["GPT", "GPTConfig", "PRESETS", "get_preset"]
