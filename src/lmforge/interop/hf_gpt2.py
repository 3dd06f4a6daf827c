"""Hugging Face GPT-2 (`GPT2LMHeadModel`) weights to and from lmforge.

GPT-2 stores its linear layers as `Conv1D` with weight shape (in, out), the transpose of
`nn.Linear`, and fuses the query/key/value projections into one `c_attn` of width 3C. The
conversion is therefore: rename, transpose, and split `c_attn` into `q_proj`, `k_proj`, `v_proj`.
"""

from __future__ import annotations

import torch

from lmforge.models.gpt import GPTConfig

# lmforge name (per layer) -> Hugging Face name (per layer); all are Conv1D, hence transposed.
_LAYER_LINEARS = {
    "attn.o_proj": "attn.c_proj",
    "mlp.up_proj": "mlp.c_fc",
    "mlp.down_proj": "mlp.c_proj",
}
_LAYER_NORMS = {"attn_norm": "ln_1", "mlp_norm": "ln_2"}


def config_from_hf(hf: dict) -> GPTConfig:
    """A GPTConfig from a Hugging Face GPT2Config dictionary."""
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["n_embd"],
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
        max_seq_len=hf["n_positions"],
        position="learned",
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp="gelu" if hf.get("activation_function") == "gelu" else "gelu_tanh",
        bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def state_from_hf(hf_state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """lmforge state dict from a `GPT2LMHeadModel` state dict."""
    sd = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    C = cfg.hidden_size
    out = {
        "embed_tokens.weight": sd["wte.weight"],
        "embed_positions.weight": sd["wpe.weight"],
        "norm.weight": sd["ln_f.weight"],
        "norm.bias": sd["ln_f.bias"],
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_layers):
        hf, ours = f"h.{i}.", f"layers.{i}."
        q, k, v = sd[hf + "attn.c_attn.weight"].t().split(C, dim=0)  # (3C, C) -> 3 x (C, C)
        qb, kb, vb = sd[hf + "attn.c_attn.bias"].split(C)
        for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            out[f"{ours}attn.{name}.weight"] = w.contiguous()
            out[f"{ours}attn.{name}.bias"] = b
        for mine, theirs in _LAYER_LINEARS.items():
            out[f"{ours}{mine}.weight"] = sd[f"{hf}{theirs}.weight"].t().contiguous()
            out[f"{ours}{mine}.bias"] = sd[f"{hf}{theirs}.bias"]
        for mine, theirs in _LAYER_NORMS.items():
            out[f"{ours}{mine}.weight"] = sd[f"{hf}{theirs}.weight"]
            out[f"{ours}{mine}.bias"] = sd[f"{hf}{theirs}.bias"]
    return out
