"""Shared Transformer blocks: attention (causal, bidirectional, GQA, KV cache), RoPE, norms, MLPs.

Every model family (decoder, encoder, encoder-decoder) is assembled from these pieces. Blocks take
their projections as ordinary `nn.Linear` children with Hugging Face-style names (`q_proj`,
`down_proj`, ...), so LoRA and quantization are in-place substitutions of those children.
"""

from lmforge.nn.attention import Attention, KVCache
from lmforge.nn.mlp import GeluMLP, SwiGLUMLP
from lmforge.nn.norms import RMSNorm, make_norm
from lmforge.nn.rope import RotaryEmbedding, apply_rotary

__all__ = [
    "Attention",
    "GeluMLP",
    "KVCache",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLUMLP",
    "apply_rotary",
    "make_norm",
]
