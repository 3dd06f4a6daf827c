"""Shared Transformer blocks: attention (causal, bidirectional, cross, GQA, KV cache), RoPE, T5's
relative position bias, norms, MLPs.

Every model family (decoder, encoder, encoder-decoder) is assembled from these pieces. Blocks take
their projections as ordinary `nn.Linear` children with Hugging Face-style names (`q_proj`,
`down_proj`, ...), so LoRA and quantization are in-place substitutions of those children.
"""

from lmforge.nn.attention import Attention, KVCache, StaticKVCache, attention_bias
from lmforge.nn.mlp import GatedGeluMLP, GeluMLP, ReluMLP, SwiGLUMLP
from lmforge.nn.norms import RMSNorm, make_norm
from lmforge.nn.relative_position import RelativePositionBias, relative_position_bucket
from lmforge.nn.rope import RotaryEmbedding, apply_rotary

__all__ = [
    "Attention",
    "GatedGeluMLP",
    "GeluMLP",
    "KVCache",
    "RMSNorm",
    "RelativePositionBias",
    "ReluMLP",
    "RotaryEmbedding",
    "StaticKVCache",
    "SwiGLUMLP",
    "apply_rotary",
    "attention_bias",
    "make_norm",
    "relative_position_bucket",
]
