"""Encoder-decoder Transformer: T5 (Raffel et al., 2020) and T5 v1.1, from the shared blocks.

Design decisions
- Pre-norm blocks with RMSNorm ("layer norm without mean subtraction or bias"), no biases in any
  linear layer, and no 1/sqrt(d) in the attention scores (T5's initialisation absorbs it: scale=1).
- Positions enter only through the relative position bias (nn/relative_position.py): one table per
  stack, bidirectional in the encoder, backward-looking in the decoder, computed once per forward
  pass and added in every self-attention layer. Cross-attention has no position bias.
- A decoder layer is self-attention (causal), cross-attention to the encoder output, then the MLP:
  ReLU (original T5) or gated GELU (v1.1). Causality and the source padding mask are folded into
  one additive float mask per stack (`attention_bias`).
- One embedding matrix (`shared`) feeds both stacks. With `tie_embeddings` (original T5) it is also
  the output projection and the decoder output is scaled by d_model^-0.5 before it; v1.1 unties
  the LM head and does not scale.
- Generation encodes the source once (`start_decoding`): every decoder layer's cross-attention
  keys/values are projected once, and the decoder's self-attention keys/values go into a `KVCache`,
  so a decoding step (`decode`) costs one token per sequence.
- Module names follow our other families (`q_proj`, `down_proj`, `norm`); interop/hf_t5.py maps
  them onto Hugging Face's `T5ForConditionalGeneration` (`SelfAttention.q`, `DenseReluDense.wo`).
- All initialisation lives in `init_weights()` (T5's, as in Mesh TensorFlow and Hugging Face).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmforge.models.registry import Family, FamilyConfig
from lmforge.nn import (
    Attention,
    GatedGeluMLP,
    KVCache,
    RelativePositionBias,
    ReluMLP,
    RMSNorm,
    attention_bias,
)

MLPS = ("relu", "gated-gelu")


@dataclass
class T5Config(FamilyConfig):
    """Shape and variant of an encoder-decoder model. Field docstrings double as CLI help."""

    family = "t5"

    vocab_size: int = 32128
    """Number of token embeddings (at least the tokenizer's vocabulary size)."""
    hidden_size: int = 512
    """Width of the residual stream (T5's d_model)."""
    num_layers: int = 6
    """Number of encoder blocks."""
    num_decoder_layers: int | None = None
    """Number of decoder blocks; defaults to num_layers."""
    num_heads: int = 8
    """Number of attention heads."""
    head_dim: int | None = None
    """Width of one head (T5's d_kv); defaults to hidden_size / num_heads."""
    intermediate_size: int | None = None
    """Hidden width of the MLP (T5's d_ff); defaults to 4 * hidden_size."""
    mlp: str = "relu"
    """Feed-forward block: `relu` (original T5) or `gated-gelu` (T5 v1.1, tanh GELU gate)."""
    relative_attention_num_buckets: int = 32
    """Number of relative position buckets."""
    relative_attention_max_distance: int = 128
    """Distance from which all relative positions share the last bucket."""
    norm_eps: float = 1e-6
    """Epsilon of the RMSNorms."""
    dropout: float = 0.0
    """Dropout on embeddings, attention, residual branches and stack outputs in training."""
    tie_embeddings: bool = True
    """Original T5: the LM head is the embedding matrix and the decoder output is scaled by
    hidden_size^-0.5 first. False (v1.1): a separate LM head, no scaling."""
    max_seq_len: int = 512
    """Soft context length: relative positions work at any length, but training blocks must fit."""
    pad_token_id: int = 0
    """Padding token id (T5: `<pad>` = 0)."""
    eos_token_id: int = 1
    """End-of-sequence token id (T5: `</s>` = 1)."""
    decoder_start_token_id: int = 0
    """The token the decoder starts from (T5 uses the padding token)."""

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        positive = (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_decoder_layers",
            "num_heads",
            "max_seq_len",
            "relative_attention_max_distance",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
                )
            self.head_dim = self.hidden_size // self.num_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        for name in ("head_dim", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.mlp not in MLPS:
            raise ValueError(f"model.mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.relative_attention_num_buckets < 4:
            raise ValueError("model.relative_attention_num_buckets must be at least 4")
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
            raise ValueError(  # the log-spaced buckets start at num_buckets / 2 (decoder)
                "model.relative_attention_max_distance must exceed relative_attention_num_buckets / 2"
            )
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"model.{name} must be a token id below vocab_size")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0:
            raise ValueError(f"model.norm_eps must be positive, got {self.norm_eps}")


# ------------------------------------------------------------------------------------- blocks
class T5Block(nn.Module):
    """Self-attention, cross-attention (decoder only), MLP: each pre-norm with a residual."""

    def __init__(self, cfg: T5Config, is_decoder: bool) -> None:
        super().__init__()

        def attention() -> Attention:
            return Attention(
                cfg.hidden_size,
                cfg.num_heads,
                head_dim=cfg.head_dim,
                bias=False,
                dropout=cfg.dropout,
                scale=1.0,
            )

        self.self_attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = attention()
        if is_decoder:
            self.cross_attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
            self.cross_attn = attention()
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        mlp = GatedGeluMLP if cfg.mlp == "gated-gelu" else ReluMLP
        self.mlp = mlp(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        *,
        bias: torch.Tensor,
        cache: KVCache | None = None,
        layer_index: int = 0,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        cross_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.self_attn_norm(x)
        a = self.self_attn(h, bias=bias, causal=False, cache=cache, layer_index=layer_index)
        x = x + self.dropout(a)
        if cross_kv is not None:
            a = self.cross_attn(self.cross_attn_norm(x), kv=cross_kv, mask=cross_mask)
            x = x + self.dropout(a)
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class T5Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention): the relative
    position bias shared by its layers, the layers, and a final RMSNorm."""

    def __init__(self, cfg: T5Config, num_layers: int, is_decoder: bool) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        self.relative_attention_bias = RelativePositionBias(
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            cfg.num_heads,
            bidirectional=not is_decoder,
        )
        self.layers = nn.ModuleList(T5Block(cfg, is_decoder) for _ in range(num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        cross_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, C) of embeddings x (B, T, C).

        mask: (B, T) True for real tokens (encoder padding). cache: the decoder's self-attention
        KVCache. cross_kv: per decoder layer, the encoder output's keys and values.
        cross_mask: (B, S) True for real source tokens.
        """
        T = x.size(1)
        start = cache.length if cache is not None else 0
        bias = self.relative_attention_bias(T, start + T, offset=start)  # (1, H, T, S)
        if self.is_decoder and T > 1:  # query i sees keys up to start + i
            causal = torch.ones(T, start + T, dtype=torch.bool, device=x.device)
            bias = attention_bias(bias, causal.tril(diagonal=start))  # (1, H, T, S)
        if mask is not None:
            bias = attention_bias(bias, mask[:, None, None, :].bool())  # (B, H, T, S)
        if cross_mask is not None:
            cross_mask = cross_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        x = self.dropout(x)
        for i, layer in enumerate(self.layers):
            kv = cross_kv[i] if cross_kv is not None else None
            x = layer(x, bias=bias, cache=cache, layer_index=i, cross_kv=kv, cross_mask=cross_mask)
        if cache is not None:
            cache.advance(T)
        return self.dropout(self.norm(x))


@dataclass
class DecoderState:
    """What decoding steps reuse: the source's padding mask, every decoder layer's cross-attention
    keys/values (projected once from the encoder output) and the self-attention KV cache."""

    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]
    """Per decoder layer: keys and values of the encoder output, each (B, H, S, D)."""
    attention_mask: torch.Tensor | None
    """(B, S), True for source tokens (None: no padding)."""
    cache: KVCache | None = None
    """The decoder's self-attention cache (None: `decode` sees the whole target at once)."""

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows `index` (beam search: the beams that survive, in their new order)."""
        self.cross_kv = [(k[index], v[index]) for k, v in self.cross_kv]
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask[index]
        if self.cache is not None:
            self.cache.reorder(index)


# -------------------------------------------------------------------------------------- model
class T5(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.encoder = T5Stack(cfg, cfg.num_layers, is_decoder=False)
        self.decoder = T5Stack(cfg, cfg.num_decoder_layers, is_decoder=True)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    def tied_parameter_names(self) -> set[str]:
        """Parameters stored once because they share another's tensor (models/loading.py)."""
        return {"lm_head.weight"} if self.config.tie_embeddings else set()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.shared.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """T5's initialisation (Mesh TensorFlow; Hugging Face `T5PreTrainedModel._init_weights`):
        embeddings N(0, 1); query N(0, (d_model * d_kv)^-1/2) (it absorbs attention's missing
        1/sqrt(d)); key, value, MLP inputs and position biases N(0, d_model^-1/2); attention
        output N(0, (heads * d_kv)^-1/2); MLP output N(0, d_ff^-1/2); norms 1. An untied LM head is
        N(0, d_model^-1/2), so that its logits start as large as those of the scaled tied head."""
        cfg = self.config
        d, d_kv, d_ff = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        nn.init.normal_(self.shared.weight, std=1.0)
        if not cfg.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=d**-0.5)
        stds = {
            "q_proj": (d * d_kv) ** -0.5,
            "k_proj": d**-0.5,
            "v_proj": d**-0.5,
            "o_proj": (cfg.num_heads * d_kv) ** -0.5,
            "gate_proj": d**-0.5,
            "up_proj": d**-0.5,
            "down_proj": d_ff**-0.5,
        }
        for name, module in self.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.Linear) and leaf in stds:
                nn.init.normal_(module.weight, std=stds[leaf])
            elif isinstance(module, RelativePositionBias):
                nn.init.normal_(module.weight, std=d**-0.5)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    # ---------------------------------------------------------------------------- forward
    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encoder output (B, S, C) of source ids (B, S); attention_mask (B, S), 1 for tokens."""
        return self.encoder(self.shared(input_ids), mask=attention_mask)

    def start_decoding(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_len: int | None = None,
    ) -> DecoderState:
        """Encode the source once and project every decoder layer's cross-attention keys/values;
        with `max_len`, add an empty self-attention KV cache for that many target positions."""
        hidden = self.encode(input_ids, attention_mask)  # (B, S, C)
        cross_kv = [layer.cross_attn.project_kv(hidden) for layer in self.decoder.layers]
        cache = None if max_len is None else self.new_cache(input_ids.size(0), max_len)
        return DecoderState(cross_kv, attention_mask, cache)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        state: DecoderState,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) of target ids (B, T) after the positions already in `state.cache`, or
        the hidden states the LM head multiplies (B, T, C; scaled when tied) if `return_hidden`."""
        x = self.decoder(
            self.shared(decoder_input_ids),
            cache=state.cache,
            cross_kv=state.cross_kv,
            cross_mask=state.attention_mask,
        )  # (B, T, C)
        if self.config.tie_embeddings:
            x = x * self.config.hidden_size**-0.5
        return x if return_hidden else self.lm_head(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        *,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) of the target ids (B, T) given the source ids (B, S) (teacher forcing).

        attention_mask: (B, S), 1 (or True) for source tokens, 0 for padding. decoder_input_ids:
        the targets shifted right behind `decoder_start_token_id` (`shift_right`).
        """
        if decoder_input_ids is None:
            raise ValueError("T5.forward needs decoder_input_ids (the targets shifted right)")
        return self.decode(
            decoder_input_ids, self.start_decoding(input_ids, attention_mask), return_hidden
        )

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for targets (B, T): the start token, then the targets but the last
        (ignored positions, -100, become padding)."""
        start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)  # (B, T)
        return shifted.masked_fill(shifted < 0, self.config.pad_token_id)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty decoder self-attention cache for `batch_size` targets of up to `max_len`."""
        cfg = self.config
        p = self.shared.weight
        return KVCache(
            cfg.num_decoder_layers,
            batch_size,
            cfg.num_heads,
            max_len,
            cfg.head_dim,
            dtype=p.dtype,
            device=p.device,
        )

    # ------------------------------------------------------------------------- accounting
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors once); optionally without the embedding and the
        relative position tables."""
        seen = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in seen.values())
        if non_embedding:
            n -= self.shared.weight.numel()
            n -= self.encoder.relative_attention_bias.weight.numel()
            n -= self.decoder.relative_attention_bias.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token when encoder and decoder each see `seq_len` tokens: 6N plus
        12 * layers * heads * head_dim * T for each attention (PaLM, appendix B). N counts every
        non-embedding weight and the LM head. Span corruption's targets are about a quarter as
        long as its inputs, so this is an upper bound for it."""
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        n = self.num_params(non_embedding=True) + self.lm_head.weight.numel()
        attentions = cfg.num_layers + 2 * cfg.num_decoder_layers  # encoder, decoder self + cross
        return 6 * n + 12 * attentions * cfg.num_heads * cfg.head_dim * T


PRESETS: dict[str, dict] = {
    "t5-tiny": dict(
        vocab_size=512,
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        intermediate_size=512,
        max_seq_len=256,
        mlp="relu",
    ),
    "t5-small": dict(  # the 60M shape of the original T5 (tied, ReLU)
        vocab_size=32128,
        hidden_size=512,
        num_layers=6,
        num_heads=8,
        head_dim=64,
        intermediate_size=2048,
        max_seq_len=512,
        mlp="relu",
    ),
}

FAMILY = Family(
    name="t5",
    config_class=T5Config,
    model_class=T5,
    presets=PRESETS,
    objectives=("span",),
    default_preset="t5-tiny",
)
