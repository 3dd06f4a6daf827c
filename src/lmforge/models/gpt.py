"""Decoder-only Transformer language model: GPT-2 and Llama styles from one set of blocks.

Design decisions
- A block is pre-norm: x + attn(norm(x)), then x + mlp(norm(x)) (GPT-2, Radford et al., 2019).
- Variants that several presets share are config fields, nothing more: learned vs rotary positions,
  LayerNorm vs RMSNorm, GELU (exact or tanh) vs SwiGLU MLP, grouped-query heads, biases, tied embeddings.
- Module names follow Hugging Face (`embed_tokens`, `layers.N.attn.q_proj`, `mlp.down_proj`,
  `lm_head`), so converters are a table of renames.
- All initialisation lives in `init_weights()`: N(0, 0.02), residual output projections scaled by
  1/sqrt(2 * num_layers) (GPT-2 paper, section 2.3), zero biases, unit norm weights.
- `forward` returns logits, or the final hidden states (`return_hidden=True`) so a loss can compute
  the vocabulary projection in chunks without materialising (B, T, V) logits.
- Generation passes a `KVCache`; positions and masks for batches of left-padded prompts come from
  the caller (the inference engine), so the model knows nothing about tokenization or padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.registry import FamilyConfig
from lmforge.nn import (
    Attention,
    GeluMLP,
    KVCache,
    RotaryEmbedding,
    StaticKVCache,
    SwiGLUMLP,
    make_norm,
)


@dataclass
class GPTConfig(FamilyConfig):
    """Shape and variant of a decoder-only model. Field docstrings double as CLI help."""

    family = "gpt"

    vocab_size: int = 50304
    """Number of token embeddings (at least the tokenizer's vocabulary size)."""
    hidden_size: int = 768
    """Width of the residual stream."""
    num_layers: int = 12
    """Number of Transformer blocks."""
    num_heads: int = 12
    """Number of query heads."""
    num_kv_heads: int | None = None
    """Number of key/value heads (grouped-query attention); defaults to num_heads."""
    head_dim: int | None = None
    """Width of one head; defaults to hidden_size / num_heads."""
    intermediate_size: int | None = None
    """Hidden width of the MLP; defaults to 4 * hidden_size (gelu) or the 8/3 rule (swiglu)."""
    max_seq_len: int = 1024
    """Context length: the longest sequence the model accepts."""
    position: str = "learned"
    """Position encoding: `learned` (GPT-2) or `rope` (rotary, Llama)."""
    rope_theta: float = 10000.0
    """Base of the rotary angles."""
    rope_scaling: dict | None = None
    """Rotary context extension, as in Hugging Face configs: None, {rope_type: linear, factor}
    or {rope_type: llama3, factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings}."""
    norm: str = "layernorm"
    """Normalisation: `layernorm` or `rmsnorm`."""
    norm_eps: float = 1e-5
    """Epsilon of the normalisation layers."""
    mlp: str = "gelu_tanh"
    """Feed-forward block: `gelu_tanh` (GPT-2's tanh-approximated GELU), `gelu` (exact erf GELU,
    as nanoGPT and BERT; about 3x cheaper on CPUs) or `swiglu` (Llama)."""
    bias: bool = True
    """Biases in the linear layers and LayerNorms."""
    tie_embeddings: bool = True
    """Share the input embedding matrix with the output projection."""
    dropout: float = 0.0
    """Dropout on embeddings, attention and residual branches during training."""

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
                )
            self.head_dim = self.hidden_size // self.num_heads
        if self.intermediate_size is None:
            if self.mlp == "swiglu":  # 2/3 of 4x, rounded up to a multiple of 64 (Llama)
                self.intermediate_size = 64 * math.ceil(8 * self.hidden_size / 3 / 64)
            else:
                self.intermediate_size = 4 * self.hidden_size
        checks = {
            "position": (self.position, ("learned", "rope")),
            "norm": (self.norm, ("layernorm", "rmsnorm")),
            "mlp": (self.mlp, ("gelu", "gelu_tanh", "swiglu")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"model.{name} must be one of {allowed}, got {value!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling, self.position)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


_ROPE_SCALING_KEYS = {
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}


def _check_rope_scaling(scaling: dict, position: str) -> None:
    """Raise ValueError unless `scaling` is a complete linear or llama3 rope_scaling mapping."""
    if not isinstance(scaling, dict):
        raise ValueError(f"model.rope_scaling must be a mapping or None, got {scaling!r}")
    if position != "rope":
        raise ValueError("model.rope_scaling needs rotary positions (model.position=rope)")
    kind = scaling.get("rope_type")
    if kind not in _ROPE_SCALING_KEYS:
        raise ValueError(
            f"model.rope_scaling.rope_type must be one of {tuple(_ROPE_SCALING_KEYS)}, got {kind!r}"
        )
    keys = set(scaling) - {"rope_type"}
    if keys != _ROPE_SCALING_KEYS[kind]:
        raise ValueError(
            f"model.rope_scaling of type {kind} needs exactly the keys "
            f"{sorted(_ROPE_SCALING_KEYS[kind])}, got {sorted(keys)}"
        )
    for key in keys:
        value = scaling[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"model.rope_scaling.{key} must be a positive number, got {value!r}")
    if kind == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ValueError("model.rope_scaling.high_freq_factor must exceed low_freq_factor")


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.bias)
        self.attn = Attention(
            cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.bias, cfg.dropout
        )
        self.mlp_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.bias)
        if cfg.mlp == "swiglu":
            self.mlp = SwiGLUMLP(cfg.hidden_size, cfg.intermediate_size, cfg.bias)
        else:
            approximate = "tanh" if cfg.mlp == "gelu_tanh" else "none"
            self.mlp = GeluMLP(cfg.hidden_size, cfg.intermediate_size, cfg.bias, approximate)
        self.dropout = cfg.dropout  # on the residual branches, functional: no module call to decode

    def forward(self, x, *, rope, mask, cache, layer_index) -> torch.Tensor:
        a = self.attn(self.attn_norm(x), rope=rope, mask=mask, cache=cache, layer_index=layer_index)
        x = x + self._drop(a)
        return x + self._drop(self.mlp(self.mlp_norm(x)))

    def _drop(self, branch: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            return F.dropout(branch, self.dropout, training=True)
        return branch


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.position == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.hidden_size)
        else:
            self.rotary = RotaryEmbedding(
                cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling
            )
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.bias)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.init_weights()

    def tied_parameter_names(self) -> set[str]:
        """Parameters stored once because they share another's tensor (models/loading.py)."""
        return {"lm_head.weight"} if self.config.tie_embeddings else set()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def reset_buffers(self) -> None:
        """Recompute the rotary tables (not saved; left empty when built on the meta device)."""
        cfg = self.config
        if cfg.position == "rope":
            self.rotary = RotaryEmbedding(
                cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling
            ).to(self.embed_tokens.weight.device)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual_out = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(
                    module.weight, mean=0.0, std=residual_std if is_residual_out else std
                )
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif hasattr(module, "weight") and name.endswith("norm"):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) for token ids (B, T), or hidden states (B, T, C) if `return_hidden`.

        positions: (T,) or (B, T) position ids; default: continue after the cached positions.
        mask: boolean (B, 1, T, S), True where a query may attend to a key (for padded batches).
        cache: a KVCache to read earlier positions from and append these to.
        """
        B, T = input_ids.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            if start + T > self.config.max_seq_len:
                raise ValueError(
                    f"sequence of {start + T} tokens exceeds the context of "
                    f"{self.config.max_seq_len} (model.max_seq_len)"
                )
            positions = torch.arange(start, start + T, device=input_ids.device)  # (T,)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        rope = None
        if self.config.position == "learned":
            x = x + self.embed_positions(positions)
        else:
            rope = self.rotary(positions)
        x = self.dropout(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope=rope, mask=mask, cache=cache, layer_index=i)
        if cache is not None:
            cache.advance(T)
        x = self.norm(x)
        return x if return_hidden else self.lm_head(x)

    def new_cache(
        self, batch_size: int, max_len: int | None = None, static: bool = False
    ) -> KVCache:
        """An empty KV cache for `batch_size` sequences (default capacity: the full context);
        `static`: a StaticKVCache, for compiled decoding steps."""
        cfg = self.config
        p = self.lm_head.weight
        return (StaticKVCache if static else KVCache)(
            cfg.num_layers,
            batch_size,
            cfg.num_kv_heads,
            max_len or cfg.max_seq_len,
            cfg.head_dim,
            dtype=p.dtype,
            device=p.device,
        )

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors once); optionally without the embedding tables."""
        seen = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in seen.values())
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
            if self.config.position == "learned":
                n -= self.embed_positions.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N + 12 * layers * heads * head_dim * T (PaLM, appendix B).

        N counts the matrices that are multiplied: every non-embedding weight plus the output
        projection (embedding lookups cost no FLOPs).
        """
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        n = self.num_params(non_embedding=True) + self.lm_head.weight.numel()
        return 6 * n + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * T
