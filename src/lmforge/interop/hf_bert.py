"""Hugging Face BERT (`transformers.BertForMaskedLM`, `BertConfig`) to and from lmforge's `Bert`.

Both store their linear layers as `nn.Linear` (out, in), so the conversion is a table of renames:

    bert.embeddings.word_embeddings            embed_tokens
    bert.embeddings.position_embeddings        embed_positions
    bert.embeddings.token_type_embeddings      embed_token_types
    bert.embeddings.LayerNorm                  embed_norm
    bert.encoder.layer.N.attention.self.query  layers.N.attn.q_proj      (key, value: k_proj, v_proj)
    ...attention.output.dense / .LayerNorm     layers.N.attn.o_proj / layers.N.attn_norm
    ...intermediate.dense                      layers.N.mlp.up_proj
    ...output.dense / .LayerNorm               layers.N.mlp.down_proj / layers.N.mlp_norm
    bert.pooler.dense                          pooler.dense
    cls.predictions.transform.dense/LayerNorm  mlm_head.dense / mlm_head.norm
    cls.predictions.decoder.weight, .bias      mlm_head.decoder.weight (untied only), .bias

Design decisions
- `BertForMaskedLM` has no pooler (Hugging Face builds it with `add_pooling_layer=False`). A
  checkpoint without `bert.pooler.*` gets a freshly initialised pooler, N(0, 0.02) from a fixed seed,
  as `transformers` does when a classification model is loaded from a masked-LM checkpoint; the
  export leaves the pooler out, so `BertForMaskedLM.from_pretrained` finds exactly its own tensors.
- Hugging Face BERT is post-LN with absolute positions: a pre-LN model is refused on export, and
  `position_embedding_type` other than "absolute" or a decoder configuration on import.
- The output bias: `transformers` 4 made `cls.predictions.decoder.bias` the same parameter as
  `cls.predictions.bias` (checkpoints converted from Google's hold only the latter); `transformers`
  5 ties them only with tied embeddings, and its forward pass adds `decoder.bias`. The import
  takes `decoder.bias` when there is one, else `cls.predictions.bias`; the export writes both.
- `hidden_dropout_prob` becomes our single `dropout` (it only matters for training).
"""

from __future__ import annotations

import torch

from lmforge.errors import UserError
from lmforge.models.bert import BertConfig

ARCHITECTURE = "BertForMaskedLM"
BIAS = "cls.predictions.bias"
POOLER_SEED = 0

# lmforge name -> Hugging Face name, model-wide (every entry has .weight, and .bias unless noted)
_GLOBAL = {
    "embed_tokens": "bert.embeddings.word_embeddings",
    "embed_positions": "bert.embeddings.position_embeddings",
    "embed_token_types": "bert.embeddings.token_type_embeddings",
    "embed_norm": "bert.embeddings.LayerNorm",
    "mlm_head.dense": "cls.predictions.transform.dense",
    "mlm_head.norm": "cls.predictions.transform.LayerNorm",
}
_EMBEDDINGS = {"embed_tokens", "embed_positions", "embed_token_types"}  # weight only
# lmforge name -> Hugging Face name, per layer (all have .weight and .bias)
_LAYER = {
    "attn.q_proj": "attention.self.query",
    "attn.k_proj": "attention.self.key",
    "attn.v_proj": "attention.self.value",
    "attn.o_proj": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "mlp.up_proj": "intermediate.dense",
    "mlp.down_proj": "output.dense",
    "mlp_norm": "output.LayerNorm",
}
# Hugging Face hidden_act -> our activation (the tanh variants differ only in rounding)
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}


def _names(cfg: BertConfig) -> dict[str, str]:
    """Every lmforge tensor name -> its Hugging Face name (pooler and decoder aside)."""
    table = {}
    for ours, theirs in _GLOBAL.items():
        params = ("weight",) if ours in _EMBEDDINGS else ("weight", "bias")
        table.update({f"{ours}.{p}": f"{theirs}.{p}" for p in params})
    for i in range(cfg.num_layers):
        for ours, theirs in _LAYER.items():
            for p in ("weight", "bias"):
                table[f"layers.{i}.{ours}.{p}"] = f"bert.encoder.layer.{i}.{theirs}.{p}"
    return table


# ------------------------------------------------------------------------------------- import
def config_from_hf(hf: dict) -> BertConfig:
    """A BertConfig from a Hugging Face BertConfig dictionary (`config.json`)."""
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise UserError(
            f"BERT hidden_act={act!r} is not supported (supported: {', '.join(_ACTIVATIONS)})"
        )
    position = hf.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise UserError(f"BERT position_embedding_type={position!r} is not supported (absolute)")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise UserError("a BERT decoder (is_decoder / add_cross_attention) is not supported")
    return BertConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        pre_norm=False,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        activation=_ACTIVATIONS[act],
    )


def _take(sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in sd:
        raise UserError(f"BERT weights lack tensor {name!r}: they do not match config.json")
    return sd[name]


def state_from_hf(hf_state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """lmforge state dict from a `BertForMaskedLM` state dict (see the module docstring)."""
    out = {ours: _take(hf_state, theirs) for ours, theirs in _names(cfg).items()}
    bias = hf_state.get("cls.predictions.decoder.bias")  # the one the forward pass adds
    out["mlm_head.decoder.bias"] = bias if bias is not None else _take(hf_state, BIAS)
    if not cfg.tie_embeddings:
        out["mlm_head.decoder.weight"] = _take(hf_state, "cls.predictions.decoder.weight")
    if "bert.pooler.dense.weight" in hf_state:
        out["pooler.dense.weight"] = hf_state["bert.pooler.dense.weight"]
        out["pooler.dense.bias"] = _take(hf_state, "bert.pooler.dense.bias")
    else:  # BertForMaskedLM: a fresh pooler, as transformers gives a classifier built from it
        g = torch.Generator().manual_seed(POOLER_SEED)
        C = cfg.hidden_size
        out["pooler.dense.weight"] = 0.02 * torch.randn(C, C, generator=g)
        out["pooler.dense.bias"] = torch.zeros(C)
    return out


# ------------------------------------------------------------------------------------- export
def config_to_hf(cfg: BertConfig) -> dict:
    """A Hugging Face BertConfig dictionary for `cfg`; pre-LN models are a `UserError`."""
    if cfg.pre_norm:
        raise UserError("cannot export model.pre_norm=True as BERT: Hugging Face BERT is post-LN")
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_seq_len,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps,
        "hidden_act": "gelu" if cfg.activation == "gelu" else "gelu_pytorch_tanh",
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": cfg.tie_embeddings,
        "is_decoder": False,
        "add_cross_attention": False,
    }


def state_to_hf(state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """`BertForMaskedLM` state dict from an lmforge state dict (`models.loading.model_state`)."""
    out = {theirs: state[ours] for ours, theirs in _names(cfg).items()}
    out[BIAS] = state["mlm_head.decoder.bias"]
    out["cls.predictions.decoder.bias"] = out[BIAS].clone()  # see the module docstring
    if not cfg.tie_embeddings:
        out["cls.predictions.decoder.weight"] = state["mlm_head.decoder.weight"]
    return out
