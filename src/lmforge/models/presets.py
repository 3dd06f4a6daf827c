"""The decoder family (`FAMILY` for models/registry.py) and its named shapes: a preset is the set of
`GPTConfig` fields that differ from the defaults.

`gpt2` is the 124M GPT-2 shape (Radford et al., 2019); `smollm2-135m` is SmolLM2-135M (a Llama
architecture: 30 layers, width 576, 9 query / 3 key-value heads, SwiGLU 1536, RMSNorm, RoPE theta
100000, tied embeddings). The `-tiny` presets are for tests and laptop-CPU runs.
"""

from __future__ import annotations

from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.registry import Family

PRESETS: dict[str, dict] = {
    "gpt2": dict(
        vocab_size=50257,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        max_seq_len=1024,
        mlp="gelu_tanh",
    ),
    "gpt2-tiny": dict(
        vocab_size=512,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        max_seq_len=256,
        bias=False,
        mlp="gelu",
    ),
    "llama-tiny": dict(
        vocab_size=512,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=352,
        max_seq_len=256,
        position="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
    ),
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        intermediate_size=1536,
        max_seq_len=8192,
        position="rope",
        rope_theta=100000.0,
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
    ),
}


FAMILY = Family(
    name="gpt",
    config_class=GPTConfig,
    model_class=GPT,
    presets=PRESETS,
    objectives=("causal_lm",),
    default_preset="gpt2-tiny",
)
