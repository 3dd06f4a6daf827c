"""Model families. Decoder-only GPT/Llama lives in gpt.py; presets.py names common shapes;
checkpoint.py saves and loads model directories (config.json + model.safetensors + tokenizer.json)."""

from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.presets import PRESETS, get_preset

__all__ = ["GPT", "GPTConfig", "PRESETS", "get_preset"]
