"""Hugging Face Llama (`transformers.LlamaForCausalLM`, `LlamaConfig`) to and from lmforge.

Llama's module names are ours with a different prefix (`model.layers.N.self_attn.q_proj` is
`layers.N.attn.q_proj`), its linears are `nn.Linear` like ours, and its rotary embedding uses the
same "rotate half" layout, so the conversion is a table of renames: no transposes, no permutation.

Design decisions
- Refused on import (one `UserError` line each): `hidden_act` other than silu, `attention_bias` or
  `mlp_bias`, a partial rotary factor, a rope type other than default / linear / llama3, and for
  `MistralForCausalLM` (Llama plus a sliding window) a window shorter than the context.
- RoPE parameters are read from both spellings of `config.json`: transformers 4.x (`rope_theta`,
  `rope_scaling` with `rope_type` or the older `type`) and 5.x (`rope_parameters`). The export
  writes both, so either version loads it.
- Tied embeddings: `lm_head.weight` is left out of the export, as `transformers` saves it.
"""

from __future__ import annotations

import torch

from lmforge.errors import UserError
from lmforge.models.gpt import GPTConfig

ARCHITECTURE = "LlamaForCausalLM"

# lmforge name (per layer) -> Hugging Face name (per layer).
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_GLOBAL = {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


# ------------------------------------------------------------------------------------- import
def _check_supported(hf: dict) -> None:
    checks = {  # field: (value, default, the only value we run)
        "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
        "attention_bias": (hf.get("attention_bias", False), False),
        "mlp_bias": (hf.get("mlp_bias", False), False),
        "partial_rotary_factor": (hf.get("partial_rotary_factor", 1.0), 1.0),
    }
    for field, (value, wanted) in checks.items():
        if value != wanted:
            raise UserError(f"Llama {field}={value!r} is not supported (lmforge runs {wanted!r})")
    window, context = hf.get("sliding_window"), hf.get("max_position_embeddings", 2048)
    if hf.get("use_sliding_window", True) and window is not None and window < context:
        raise UserError(
            f"sliding_window={window} is shorter than the context ({context}); "
            "lmforge has no sliding-window attention"
        )


def rope_from_hf(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from a 4.x (`rope_scaling`) or 5.x (`rope_parameters`) config."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in _SCALING_KEYS:
        raise UserError(
            f"rope scaling type {kind!r} is not supported "
            f"(supported: default, {', '.join(_SCALING_KEYS)})"
        )
    if kind == "llama3":
        params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    missing = [k for k in _SCALING_KEYS[kind] if params.get(k) is None]
    if missing:
        raise UserError(f"rope scaling {kind!r} lacks {', '.join(missing)}")
    return theta, {"rope_type": kind, **{k: params[k] for k in _SCALING_KEYS[kind]}}


def config_from_hf(hf: dict) -> GPTConfig:
    """A GPTConfig from a Hugging Face LlamaConfig (or MistralConfig) dictionary."""
    _check_supported(hf)
    theta, scaling = rope_from_hf(hf)
    heads = hf["num_attention_heads"]
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        position="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp="swiglu",
        bias=False,
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )


def _take(sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in sd:
        raise UserError(f"Llama weights lack tensor {name!r}: they do not match config.json")
    return sd[name]


def state_from_hf(hf_state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """lmforge state dict from a `LlamaForCausalLM` state dict."""
    out = {mine: _take(hf_state, theirs) for mine, theirs in _GLOBAL.items()}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _take(hf_state, "lm_head.weight")
    for i in range(cfg.num_layers):
        for mine, theirs in _LAYER.items():
            out[f"layers.{i}.{mine}"] = _take(hf_state, f"model.layers.{i}.{theirs}")
    return out


# ------------------------------------------------------------------------------------- export
def _refuse(field: str, value, why: str) -> UserError:
    return UserError(f"cannot export model.{field}={value!r} as Llama: {why}")


def _rope_parameters(cfg: GPTConfig) -> dict:
    """The transformers 5.x `rope_parameters` mapping (rope_type, rope_theta, scaling keys)."""
    scaling = dict(cfg.rope_scaling or {"rope_type": "default"})
    return {**scaling, "rope_theta": cfg.rope_theta}


def config_to_hf(cfg: GPTConfig) -> dict:
    """A LlamaConfig dictionary for `cfg`; a field Llama cannot express is a `UserError`."""
    if cfg.position != "rope":
        raise _refuse("position", cfg.position, "Llama has rotary positions")
    if cfg.norm != "rmsnorm":
        raise _refuse("norm", cfg.norm, "Llama uses RMSNorm")
    if cfg.mlp != "swiglu":
        raise _refuse("mlp", cfg.mlp, "Llama has a SwiGLU MLP")
    if cfg.bias:
        raise _refuse("bias", cfg.bias, "Llama's linear layers have no biases")
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers 4.x
        "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,  # transformers 4.x
        "rope_parameters": _rope_parameters(cfg),  # transformers 5.x
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
    }


def state_to_hf(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """`LlamaForCausalLM` state dict from an lmforge state dict (`models.loading.model_state`)."""
    out = {theirs: state[mine] for mine, theirs in _GLOBAL.items()}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(cfg.num_layers):
        for mine, theirs in _LAYER.items():
            out[f"model.layers.{i}.{theirs}"] = state[f"layers.{i}.{mine}"]
    return out
