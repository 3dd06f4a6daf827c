"""Hugging Face GPT-2 (`transformers.GPT2LMHeadModel`, `GPT2Config`) to and from lmforge.

GPT-2 stores its linear layers as `Conv1D` with weight shape (in, out), the transpose of
`nn.Linear`, and fuses the query/key/value projections into one `c_attn` of width 3C. The
conversion is therefore: rename, transpose, and split (or concatenate) `c_attn` into `q_proj`,
`k_proj`, `v_proj`.

Design decisions
- `activation_function` "gelu_new" (and its aliases "gelu_pytorch_tanh", "gelu_fast") is our
  `gelu_tanh`; "gelu" is our exact `gelu`. Anything else is refused.
- GPT2Config always has biases. An lmforge model without biases (`bias=False`, the `gpt2-tiny`
  preset) is exported with zero biases in every linear layer and LayerNorm: exactly the same
  function, at the cost of a few zero tensors in the file.
- Tied embeddings: `lm_head.weight` is left out of the export, as `transformers` itself saves it.
"""

from __future__ import annotations

import torch

from lmforge.errors import UserError
from lmforge.models.gpt import GPTConfig

ARCHITECTURE = "GPT2LMHeadModel"

# lmforge name (per layer) -> Hugging Face name (per layer); all are Conv1D, hence transposed.
_LAYER_LINEARS = {
    "attn.o_proj": "attn.c_proj",
    "mlp.up_proj": "mlp.c_fc",
    "mlp.down_proj": "mlp.c_proj",
}
_LAYER_NORMS = {"attn_norm": "ln_1", "mlp_norm": "ln_2"}
# Hugging Face activation_function -> our `mlp` (the tanh variants differ only in rounding).
_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
}
# GPT2Config fields that change the function away from plain GPT-2: field -> the only value we run.
_REQUIRED = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}


# ------------------------------------------------------------------------------------- import
def config_from_hf(hf: dict) -> GPTConfig:
    """A GPTConfig from a Hugging Face GPT2Config dictionary (`config.json`)."""
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise UserError(
            f"GPT-2 activation_function={act!r} is not supported "
            f"(supported: {', '.join(_ACTIVATIONS)})"
        )
    for field, value in _REQUIRED.items():
        if hf.get(field, value) != value:
            raise UserError(f"GPT-2 {field}={hf[field]!r} is not supported (lmforge runs {value})")
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
        mlp=_ACTIVATIONS[act],
        bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _take(sd: dict[str, torch.Tensor], name: str, shape: tuple[int, ...] | None = None):
    """Tensor `name` of a checkpoint (of `shape` if given), or a `UserError` naming it."""
    if name not in sd:
        raise UserError(f"GPT-2 weights lack tensor {name!r}: they do not match config.json")
    if shape is not None and tuple(sd[name].shape) != shape:
        raise UserError(
            f"GPT-2 tensor {name!r} has shape {tuple(sd[name].shape)}, config.json implies {shape}"
        )
    return sd[name]


def state_from_hf(hf_state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """lmforge state dict from a `GPT2LMHeadModel` state dict (with or without `transformer.`)."""
    sd = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    C = cfg.hidden_size
    out = {
        "embed_tokens.weight": _take(sd, "wte.weight"),
        "embed_positions.weight": _take(sd, "wpe.weight"),
        "norm.weight": _take(sd, "ln_f.weight"),
        "norm.bias": _take(sd, "ln_f.bias"),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _take(sd, "lm_head.weight")
    for i in range(cfg.num_layers):
        hf, ours = f"h.{i}.", f"layers.{i}."
        qkv = _take(sd, hf + "attn.c_attn.weight", (C, 3 * C))
        q, k, v = qkv.t().split(C, dim=0)  # (C, 3C) -> (3C, C) -> 3 x (C, C)
        qb, kb, vb = _take(sd, hf + "attn.c_attn.bias", (3 * C,)).split(C)  # 3 x (C,)
        for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            out[f"{ours}attn.{name}.weight"] = w.contiguous()
            out[f"{ours}attn.{name}.bias"] = b
        for mine, theirs in _LAYER_LINEARS.items():
            out[f"{ours}{mine}.weight"] = _take(sd, f"{hf}{theirs}.weight").t().contiguous()
            out[f"{ours}{mine}.bias"] = _take(sd, f"{hf}{theirs}.bias")
        for mine, theirs in _LAYER_NORMS.items():
            out[f"{ours}{mine}.weight"] = _take(sd, f"{hf}{theirs}.weight")
            out[f"{ours}{mine}.bias"] = _take(sd, f"{hf}{theirs}.bias")
    return out


# ------------------------------------------------------------------------------------- export
def _refuse(field: str, value, why: str) -> UserError:
    return UserError(f"cannot export model.{field}={value!r} as GPT-2: {why}")


def config_to_hf(cfg: GPTConfig) -> dict:
    """A GPT2Config dictionary for `cfg`; a field GPT-2 cannot express is a `UserError`."""
    if cfg.position != "learned":
        raise _refuse("position", cfg.position, "GPT-2 has learned positions")
    if cfg.norm != "layernorm":
        raise _refuse("norm", cfg.norm, "GPT-2 uses LayerNorm")
    if cfg.mlp not in ("gelu", "gelu_tanh"):
        raise _refuse("mlp", cfg.mlp, "GPT-2 has a GELU MLP")
    if cfg.num_kv_heads != cfg.num_heads:
        raise _refuse("num_kv_heads", cfg.num_kv_heads, "GPT-2 has no grouped-query attention")
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        raise _refuse("head_dim", cfg.head_dim, "GPT-2 needs head_dim = hidden_size / num_heads")
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.hidden_size,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.intermediate_size,
        "n_positions": cfg.max_seq_len,
        "activation_function": "gelu" if cfg.mlp == "gelu" else "gelu_new",
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
    }


def _bias(state: dict[str, torch.Tensor], name: str, width: int, like: torch.Tensor):
    """The bias `name`, or zeros of `width` for a model built with bias=False."""
    return state.get(name, torch.zeros(width, dtype=like.dtype))


def state_to_hf(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """`GPT2LMHeadModel` state dict from an lmforge state dict (`models.loading.model_state`)."""
    C = cfg.hidden_size
    wte = state["embed_tokens.weight"]
    out = {
        "transformer.wte.weight": wte,
        "transformer.wpe.weight": state["embed_positions.weight"],
        "transformer.ln_f.weight": state["norm.weight"],
        "transformer.ln_f.bias": _bias(state, "norm.bias", C, wte),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(cfg.num_layers):
        ours, hf = f"layers.{i}.", f"transformer.h.{i}."
        names = [f"{ours}attn.{p}_proj" for p in "qkv"]
        qkv = torch.cat([state[n + ".weight"] for n in names], dim=0)  # 3 x (C, C) -> (3C, C)
        out[hf + "attn.c_attn.weight"] = qkv.t().contiguous()  # (C, 3C), Conv1D layout
        out[hf + "attn.c_attn.bias"] = torch.cat([_bias(state, n + ".bias", C, wte) for n in names])
        for mine, theirs in _LAYER_LINEARS.items():
            w = state[f"{ours}{mine}.weight"]  # (out, in)
            out[f"{hf}{theirs}.weight"] = w.t().contiguous()  # (in, out)
            out[f"{hf}{theirs}.bias"] = _bias(state, f"{ours}{mine}.bias", w.shape[0], wte)
        for mine, theirs in _LAYER_NORMS.items():
            out[f"{hf}{theirs}.weight"] = state[f"{ours}{mine}.weight"]
            out[f"{hf}{theirs}.bias"] = _bias(state, f"{ours}{mine}.bias", C, wte)
    return out
