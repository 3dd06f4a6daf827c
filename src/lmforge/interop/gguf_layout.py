"""How lmforge's decoder maps onto GGUF architectures: tensor names and the rotary row order.

References: llama.cpp's convert_hf_to_gguf.py (`LlamaModel.permute`, `GPT2Model`) and
llama-model.cpp (which tensors each architecture reads).

- Two GGUF architectures cover every lmforge decoder: "llama" (rotary positions, RMSNorm, SwiGLU;
  optional biases) and "gpt2" (learned positions, LayerNorm, GELU; Q/K/V fused into `attn_qkv`).
  Other mixes (say RoPE with LayerNorm) have no GGUF architecture.
- Tensor names are a table: `layers.N.attn.q_proj.weight` <-> `blk.N.attn_q.weight`. Tied
  embeddings are the absence of `output.weight`.
- Rotary layout: llama.cpp rotates channel pairs (2i, 2i+1) of each head, lmforge and Hugging Face
  rotate (i, i + D/2). convert_hf_to_gguf.py therefore permutes the rows of Q and K (K with the
  key/value head count) into the interleaved order; the importer undoes it, the exporter applies it.
- Llama 3 rope scaling is a `rope_freqs` tensor in llama.cpp: one factor per frequency, by which
  llama.cpp divides that frequency.
"""

from __future__ import annotations

import numpy as np

from lmforge.errors import UserError
from lmforge.models.gpt import GPTConfig
from lmforge.nn.rope import inverse_frequencies

ARCHITECTURES = ("llama", "gpt2")

# lmforge module -> GGUF tensor (".weight" / ".bias" appended to both).
_GLOBAL = {
    "embed_tokens": "token_embd",
    "embed_positions": "position_embd",
    "norm": "output_norm",
    "lm_head": "output",
}
_LAYER = {
    "attn_norm": "attn_norm",
    "attn.q_proj": "attn_q",
    "attn.k_proj": "attn_k",
    "attn.v_proj": "attn_v",
    "attn.o_proj": "attn_output",
    "mlp_norm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
QKV = ("attn_q", "attn_k", "attn_v")  # fused into `attn_qkv` by the "gpt2" architecture
GPT2_BIASED = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
ROPE_FREQS = "rope_freqs.weight"


def architecture_of(cfg: GPTConfig) -> str:
    """The GGUF architecture that expresses `cfg`: "llama" or "gpt2"."""
    if (cfg.position, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu"):
        return "llama"
    if (cfg.position, cfg.norm) == ("learned", "layernorm") and cfg.mlp in ("gelu", "gelu_tanh"):
        return "gpt2"
    raise UserError(
        f"no GGUF architecture has position={cfg.position}, norm={cfg.norm}, mlp={cfg.mlp}; "
        "exportable: rope + rmsnorm + swiglu (llama) or learned + layernorm + gelu (gpt2)"
    )


def gguf_name(name: str) -> str:
    """GGUF name of an lmforge parameter: `layers.3.attn.q_proj.weight` -> `blk.3.attn_q.weight`."""
    module, kind = name.rsplit(".", 1)
    if module.startswith("layers."):
        _, index, rest = module.split(".", 2)
        return f"blk.{index}.{_LAYER[rest]}.{kind}"
    return f"{_GLOBAL[module]}.{kind}"


def to_interleaved(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Q/K rows (or bias) from rotate-half order to llama.cpp's interleaved rotary order."""
    rows = w.shape[0]
    w = w.reshape(num_heads, 2, rows // num_heads // 2, *w.shape[1:])  # (H, 2, D/2, C)
    return np.ascontiguousarray(w.swapaxes(1, 2)).reshape(rows, *w.shape[3:])  # (H*D, C)


def from_interleaved(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of `to_interleaved`: llama.cpp's rotary row order back to rotate-half."""
    rows = w.shape[0]
    w = w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])  # (H, D/2, 2, C)
    return np.ascontiguousarray(w.swapaxes(1, 2)).reshape(rows, *w.shape[3:])  # (H*D, C)


def rope_factors(head_dim: int, theta: float, scaling: dict) -> np.ndarray:
    """(D/2,) factors that divide each rotary frequency (llama.cpp's `rope_freqs`)."""
    plain = inverse_frequencies(head_dim, theta, None)
    return (plain / inverse_frequencies(head_dim, theta, scaling)).float().numpy()
