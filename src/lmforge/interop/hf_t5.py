"""Hugging Face T5 (`transformers.T5ForConditionalGeneration`, `T5Config`) to and from lmforge.

The weights are the same matrices under other names (no transposes, no fused projections):

    shared                                           shared
    {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias
                                                     {encoder,decoder}.relative_attention_bias
    encoder.block.N.layer.0.SelfAttention.{q,k,v,o}  encoder.layers.N.self_attn.{q,k,v,o}_proj
    encoder.block.N.layer.0.layer_norm               encoder.layers.N.self_attn_norm
    encoder.block.N.layer.1.DenseReluDense.wi        encoder.layers.N.mlp.up_proj     (relu)
                                           wi_0, wi_1                 gate_proj, up_proj (gated)
                                           wo                         down_proj
    encoder.block.N.layer.1.layer_norm               encoder.layers.N.mlp_norm
    decoder.block.N.layer.1.EncDecAttention / layer_norm   decoder.layers.N.cross_attn / _norm
    decoder.block.N.layer.2.*                        decoder.layers.N.mlp*  (the decoder's MLP)
    {encoder,decoder}.final_layer_norm               {encoder,decoder}.norm
    lm_head                                          lm_head (untied models only)

Design decisions
- Our `tie_embeddings` means "tied and scaled by d_model^-0.5" (original T5) and False "untied, not
  scaled" (v1.1). Hugging Face writes that choice as `tie_word_embeddings` (transformers 4) or
  `scale_decoder_outputs` (transformers 5, which keeps `tie_word_embeddings` true and unties only
  when the checkpoint holds a different `lm_head.weight`). On import the scaling decides; an
  unscaled model without its own `lm_head.weight` gets a copy of the embedding matrix. On export
  both keys are written, so both major versions of `transformers` read the same function.
- `feed_forward_proj` "relu" and "gated-gelu" (tanh GELU, as `transformers` runs it) are supported;
  other activations are refused.
- An export's `generation_config.json` names the decoder start, padding and end tokens, which
  `transformers`' `generate` needs for an encoder-decoder.
"""

from __future__ import annotations

import torch

from lmforge.errors import UserError
from lmforge.models.t5 import T5Config

ARCHITECTURE = "T5ForConditionalGeneration"
_ACTIVATIONS = ("relu", "gated-gelu")


def _layer_names(stack: str, i: int, cfg: T5Config) -> dict[str, str]:
    """lmforge name -> Hugging Face name of every weight of layer i of `stack`."""
    ours, hf = f"{stack}.layers.{i}.", f"{stack}.block.{i}.layer."
    names = {f"{ours}self_attn.{p}_proj.weight": f"{hf}0.SelfAttention.{p}.weight" for p in "qkvo"}
    names[f"{ours}self_attn_norm.weight"] = f"{hf}0.layer_norm.weight"
    ff = 1
    if stack == "decoder":
        names.update(
            {
                f"{ours}cross_attn.{p}_proj.weight": f"{hf}1.EncDecAttention.{p}.weight"
                for p in "qkvo"
            }
        )
        names[f"{ours}cross_attn_norm.weight"] = f"{hf}1.layer_norm.weight"
        ff = 2
    mlp = f"{hf}{ff}.DenseReluDense."
    if cfg.mlp == "gated-gelu":
        names[f"{ours}mlp.gate_proj.weight"] = mlp + "wi_0.weight"
        names[f"{ours}mlp.up_proj.weight"] = mlp + "wi_1.weight"
    else:
        names[f"{ours}mlp.up_proj.weight"] = mlp + "wi.weight"
    names[f"{ours}mlp.down_proj.weight"] = mlp + "wo.weight"
    names[f"{ours}mlp_norm.weight"] = f"{hf}{ff}.layer_norm.weight"
    return names


def weight_names(cfg: T5Config) -> dict[str, str]:
    """lmforge name -> Hugging Face name of every weight but the embeddings and the LM head."""
    names = {}
    for stack, layers in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        names[f"{stack}.relative_attention_bias.weight"] = (
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        )
        names[f"{stack}.norm.weight"] = f"{stack}.final_layer_norm.weight"
        for i in range(layers):
            names.update(_layer_names(stack, i, cfg))
    return names


# ------------------------------------------------------------------------------------- import
def config_from_hf(hf: dict) -> T5Config:
    """A T5Config from a Hugging Face T5Config dictionary (`config.json`)."""
    act = hf.get("feed_forward_proj", "relu")
    if act not in _ACTIVATIONS:
        raise UserError(
            f"T5 feed_forward_proj={act!r} is not supported (supported: {', '.join(_ACTIVATIONS)})"
        )
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    return T5Config(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["d_model"],
        num_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        num_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        intermediate_size=hf["d_ff"],
        mlp=act,
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        tie_embeddings=bool(scaled),
        max_seq_len=hf.get("n_positions") or 512,
        pad_token_id=_token_id(hf, "pad_token_id", 0),
        eos_token_id=_token_id(hf, "eos_token_id", 1),
        decoder_start_token_id=_token_id(
            hf, "decoder_start_token_id", _token_id(hf, "pad_token_id", 0)
        ),
    )


def _token_id(hf: dict, key: str, default: int) -> int:
    value = hf.get(key)
    value = value[0] if isinstance(value, list) and value else value
    return value if isinstance(value, int) else default


def _take(sd: dict[str, torch.Tensor], name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Tensor `name` of a checkpoint, of `shape`, or a `UserError` naming it."""
    if name not in sd:
        raise UserError(f"T5 weights lack tensor {name!r}: they do not match config.json")
    if tuple(sd[name].shape) != shape:
        raise UserError(
            f"T5 tensor {name!r} has shape {tuple(sd[name].shape)}, config.json implies {shape}"
        )
    return sd[name]


def _shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
    """lmforge weight name -> shape, without building a model."""
    from lmforge.models.t5 import T5

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in T5(cfg).state_dict().items()}


def state_from_hf(hf_state: dict[str, torch.Tensor], cfg: T5Config) -> dict[str, torch.Tensor]:
    """lmforge state dict from a `T5ForConditionalGeneration` state dict."""
    shapes = _shapes(cfg)
    embed = "shared.weight" if "shared.weight" in hf_state else "encoder.embed_tokens.weight"
    shared = _take(hf_state, embed, shapes["shared.weight"])
    out = {"shared.weight": shared}
    for ours, theirs in weight_names(cfg).items():
        out[ours] = _take(hf_state, theirs, shapes[ours])
    head = hf_state.get("lm_head.weight")
    if cfg.tie_embeddings:
        if head is not None and not torch.equal(head, shared):
            raise UserError(
                "this T5 scales its decoder output (tie_word_embeddings) but has an LM head of "
                "its own; lmforge runs scaled models only with the embedding as LM head"
            )
    else:
        head = shared if head is None else _take(hf_state, "lm_head.weight", shared.shape)
        out["lm_head.weight"] = head.clone()
    return out


# ------------------------------------------------------------------------------------- export
def config_to_hf(cfg: T5Config) -> dict:
    """A T5Config dictionary for `cfg` (every lmforge T5 is expressible)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "t5",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.hidden_size,
        "d_kv": cfg.head_dim,
        "d_ff": cfg.intermediate_size,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_factor": 1.0,
        "feed_forward_proj": cfg.mlp,
        "is_encoder_decoder": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "scale_decoder_outputs": cfg.tie_embeddings,
        "n_positions": cfg.max_seq_len,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "use_cache": True,
    }


def generation_config(cfg: T5Config) -> dict:
    """`generation_config.json` entries `transformers`' `generate` needs for an encoder-decoder."""
    return {
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
    }


def state_to_hf(state: dict[str, torch.Tensor], cfg: T5Config) -> dict[str, torch.Tensor]:
    """`T5ForConditionalGeneration` state dict from an lmforge state dict (`model_state`)."""
    out = {"shared.weight": state["shared.weight"]}
    for ours, theirs in weight_names(cfg).items():
        out[theirs] = state[ours]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out
