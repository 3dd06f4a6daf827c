"""Encoder-only Transformer: BERT (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding"), built from the same `nn/` blocks as the decoder.

    h_0 = LayerNorm(E_word[x] + E_pos[t] + E_type[s])                      (section 3, figure 2)
    post-LN block (BERT):  h = LN(h + Attn(h));  h = LN(h + MLP(h))
    pre-LN block (option): h = h + Attn(LN(h));  h = h + MLP(LN(h)), final LN   (Xiong et al., 2020)
    MLM head:  logits = LN(gelu(W_t h + b_t)) E_word^T + b                  (tied decoder)
    pooler:    tanh(W_p h_[CLS] + b_p)                                      (sentence-level heads)

Design decisions
- Attention is the shared `nn.Attention` with `causal=False`; padding is a boolean key mask
  (B, 1, T, T) built from the (B, T) 1/0 `attention_mask`, so padded keys get no weight.
- Module names follow the decoder (`embed_tokens`, `layers.N.attn.q_proj`, `mlp.up_proj`,
  `attn_norm`): the Hugging Face converter (interop/hf_bert.py) is a table of renames. Post-LN and
  pre-LN share the names; only where the norms are applied differs.
- `forward` returns MLM logits, or the final hidden states (`return_hidden=True`); the masked-LM
  loss (train/mlm.py) passes `select` to run the head on the ~15% selected positions only, inside
  `forward`, so data-parallel training sees every parameter it uses.
- All initialisation lives in `init_weights()`: N(0, 0.02) for matrices and embeddings, zero biases,
  unit LayerNorm gains (BERT's `initializer_range`; no residual scaling).
- The pooler is trained by no pre-training objective here (there is no next-sentence prediction,
  as in RoBERTa); it is there for sentence-level fine-tuning heads, as in Hugging Face `BertModel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.registry import Family, FamilyConfig
from lmforge.nn import Attention, GeluMLP

ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}
"""Our `activation` name -> the `approximate` argument of torch's GELU."""


@dataclass
class BertConfig(FamilyConfig):
    """Shape and variant of an encoder-only model. Field docstrings double as CLI help."""

    family = "bert"

    vocab_size: int = 30522
    """Number of token embeddings (at least the tokenizer's vocabulary size)."""
    hidden_size: int = 768
    """Width of the residual stream."""
    num_layers: int = 12
    """Number of Transformer blocks."""
    num_heads: int = 12
    """Number of attention heads (hidden_size must be a multiple)."""
    intermediate_size: int = 3072
    """Hidden width of the MLP (4 * hidden_size in BERT)."""
    max_seq_len: int = 512
    """Number of learned positions: the longest sequence the model accepts."""
    type_vocab_size: int = 2
    """Number of token types (segments A and B)."""
    norm_eps: float = 1e-12
    """Epsilon of the LayerNorms (BERT's 1e-12)."""
    dropout: float = 0.1
    """Dropout on embeddings, attention weights and residual branches during training."""
    pre_norm: bool = False
    """Pre-LN blocks with a final LayerNorm (Xiong et al., 2020) instead of BERT's post-LN."""
    tie_embeddings: bool = True
    """Share the word embedding matrix with the MLM decoder."""
    activation: str = "gelu"
    """MLP and MLM-head activation: `gelu` (exact erf, BERT) or `gelu_tanh` (tanh approximation)."""

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_seq_len",
            "type_vocab_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0:
            raise ValueError(f"model.norm_eps must be positive, got {self.norm_eps}")


class Block(nn.Module):
    """One encoder layer: bidirectional self-attention and a GELU MLP, post-LN or pre-LN."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.attn = Attention(cfg.hidden_size, cfg.num_heads, dropout=cfg.dropout)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        approximate = ACTIVATIONS[cfg.activation]
        self.mlp = GeluMLP(cfg.hidden_size, cfg.intermediate_size, approximate=approximate)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attn(self.attn_norm(x), mask=mask, causal=False))
            return x + self.dropout(self.mlp(self.mlp_norm(x)))
        x = self.attn_norm(x + self.dropout(self.attn(x, mask=mask, causal=False)))
        return self.mlp_norm(x + self.dropout(self.mlp(x)))


class MLMHead(nn.Module):
    """Masked-LM prediction: transform (dense, GELU, LayerNorm), then the (tied) decoder + bias."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.approximate = ACTIVATIONS[cfg.activation]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) for hidden states (..., C)."""
        h = self.norm(F.gelu(self.dense(hidden), approximate=self.approximate))
        return self.decoder(h)


class Pooler(nn.Module):
    """tanh(dense(h_[CLS])): one vector per sequence for sentence-level heads."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, C) from hidden states (B, T, C): the first position is [CLS]."""
        return torch.tanh(self.dense(hidden[:, 0]))


class Bert(nn.Module):
    has_unused_parameters = True
    """The pooler gets no gradient from masked-LM pre-training (DDP must be told, train/loop.py)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.hidden_size)
        self.embed_token_types = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps) if cfg.pre_norm else None
        self.pooler = Pooler(cfg)
        self.mlm_head = MLMHead(cfg)
        self.tie_weights()
        self.init_weights()

    def tied_parameter_names(self) -> set[str]:
        """Parameters stored once because they share another's tensor (models/loading.py)."""
        return {"mlm_head.decoder.weight"} if self.config.tie_embeddings else set()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.mlm_head.decoder.weight = self.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """BERT's initialisation: N(0, std) weights, zero biases, unit LayerNorm gains."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        return_hidden: bool = False,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MLM logits (B, T, V) for token ids (B, T), or hidden states (B, T, C) if `return_hidden`.

        token_type_ids: (B, T) segment ids (default all 0).
        attention_mask: (B, T), 1 for real tokens and 0 for padding (default: no padding).
        select: boolean (B, T); logits (N, V) of the N selected positions only (masked-LM
            training predicts ~15% of the positions, so the head runs on those alone).
        """
        B, T = input_ids.shape
        if input_ids.size(1) > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {T} tokens exceeds the {self.config.max_seq_len} positions of the "
                "model (model.max_seq_len)"
            )
        positions = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)  # (B, T, C)
        if token_type_ids is not None:
            x = x + self.embed_token_types(token_type_ids)
        else:  # segment 0 everywhere: one row, broadcast
            x = x + self.embed_token_types.weight[0]
        x = self.dropout(self.embed_norm(x))
        mask = None
        if attention_mask is not None:
            keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
            mask = keys.expand(B, 1, T, T)  # (B, 1, T, T): every query sees the real keys
        for layer in self.layers:
            x = layer(x, mask)
        if self.norm is not None:
            x = self.norm(x)
        if return_hidden:
            return x
        return self.mlm_head(x if select is None else x[select])  # (B, T, V) or (N, V)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors once); optionally without the embedding tables."""
        n = sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
        if non_embedding:
            for table in (self.embed_tokens, self.embed_positions, self.embed_token_types):
                n -= table.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N + 12 * layers * hidden_size * T (PaLM, appendix B).

        N counts the matrices that are multiplied: every non-embedding weight plus the MLM decoder
        (an upper bound for masked-LM training, which decodes only the selected positions).
        """
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        n = self.num_params(non_embedding=True)
        if cfg.tie_embeddings:
            n += self.mlm_head.decoder.weight.numel()
        return 6 * n + 12 * cfg.num_layers * cfg.hidden_size * T


PRESETS: dict[str, dict] = {
    "bert-base": dict(  # BERT-base (Devlin et al., 2019): 110M parameters, uncased WordPiece vocab
        vocab_size=30522,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        max_seq_len=512,
    ),
    "bert-tiny": dict(  # tests and laptop-CPU runs
        vocab_size=512,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        intermediate_size=512,
        max_seq_len=128,
        dropout=0.0,
    ),
}
"""Preset name -> the BertConfig fields that differ from the defaults."""

FAMILY = Family(
    name="bert",
    config_class=BertConfig,
    model_class=Bert,
    presets=PRESETS,
    objectives=("mlm",),
    default_preset="bert-tiny",
)
