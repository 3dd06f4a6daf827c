"""GGUF (llama.cpp) import and export of lmforge decoder models.

    model, tokenizer = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")   # fp32, CPU, eval mode
    save_gguf(model, tokenizer, "model.gguf", dtype="q8_0")            # f32 | f16 | q8_0

References: the GGUF spec (github.com/ggml-org/ggml/blob/master/docs/gguf.md); llama.cpp's
convert_hf_to_gguf.py (`LlamaModel.permute`, `GPT2Model`) and llama-model.cpp (which tensors each
architecture reads). Reading goes through `gguf.GGUFReader` (gguf_read.py), writing through
`gguf.GGUFWriter`; the tokenizer lives in the metadata (gguf_tokenizer.py).

Design decisions
- Two GGUF architectures cover every lmforge decoder, "llama" and "gpt2"; names, rotary row order
  and which config maps to which are in gguf_layout.py.
- llama.cpp requires biases in "gpt2" files, so a bias-free model is written with zero biases, and
  a file whose biases are all zero is read back as bias-free (exact either way).
- Export types follow convert_hf_to_gguf.py: 1-D tensors (norms, biases) and `position_embd`
  stay f32; matrices become f16 or Q8_0 (a matrix whose rows are not a multiple of 32 falls back
  to f16).
- What GGUF has no key for travels under `lmforge.*` keys that llama.cpp ignores: the exact-erf
  GELU (`lmforge.mlp`; llama.cpp computes the tanh GELU) and Llama 3 rope scaling parameters
  (`lmforge.rope_scaling`, beside llama.cpp's per-frequency `rope_freqs` tensor).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf import (
    GGML_QUANT_VERSION,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    RopeScalingType,
)
from gguf.quants import quantize

from lmforge.errors import UserError
from lmforge.fileio import atomic_path
from lmforge.interop.gguf_layout import (
    ARCHITECTURES,
    GPT2_BIASED,
    QKV,
    ROPE_FREQS,
    architecture_of,
    from_interleaved,
    gguf_name,
    rope_factors,
    to_interleaved,
)
from lmforge.interop.gguf_read import GGUFFile
from lmforge.interop.gguf_tokenizer import add_tokenizer, tokenizer_from_gguf
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.loading import check_vocab, finish_loading, model_state
from lmforge.tokenizer import Tokenizer

DTYPES = ("f32", "f16", "q8_0")
_FILE_TYPES = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
}

# Llama 3.x's rope scaling, assumed for a `rope_freqs` tensor without `lmforge.rope_scaling`.
_LLAMA3_DEFAULTS = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


# ------------------------------------------------------------------------------------- import
def load_gguf(path: str | Path) -> tuple[GPT, Tokenizer]:
    """The model (fp32, CPU, eval mode) and tokenizer (chat template, bos/eos) of a GGUF file."""
    f = GGUFFile(path)
    cfg = config_from_gguf(f)
    with torch.device("meta"):
        model = GPT(cfg)
    state = state_from_gguf(f, cfg, model.state_dict())  # names and shapes checked
    # assign=True: the parameters become the freshly dequantized tensors, without a second copy
    model.load_state_dict(state, strict=False, assign=True)
    finish_loading(model)  # rotary tables off the meta device, tied embeddings
    tokenizer = tokenizer_from_gguf(f)
    check_vocab(tokenizer, cfg, f.path)
    return model.eval(), tokenizer


def read_gguf_config(path: str | Path) -> GPTConfig:
    """The `GPTConfig` a GGUF file describes (architecture, shapes, tied embeddings, biases)."""
    return config_from_gguf(GGUFFile(path))


def config_from_gguf(f: GGUFFile) -> GPTConfig:
    arch = f.architecture
    if arch not in ARCHITECTURES:
        raise UserError(
            f"{f.path} is a GGUF of architecture {arch!r}; lmforge imports only "
            f"{', '.join(ARCHITECTURES)}"
        )
    f.check_types()
    hidden, heads = int(f.require(f"{arch}.embedding_length")), _heads(f, "head_count")
    head_dim = int(f.get(f"{arch}.attention.key_length", hidden // heads))
    tokens = f.get("tokenizer.ggml.tokens")
    vocab = (
        len(tokens) if tokens else f.get(f"{arch}.vocab_size") or f.shape("token_embd.weight")[0]
    )
    fields: dict = dict(
        vocab_size=int(vocab),
        hidden_size=hidden,
        num_layers=int(f.require(f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=_heads(f, "head_count_kv", default=heads),
        head_dim=head_dim,
        intermediate_size=int(f.require(f"{arch}.feed_forward_length")),
        max_seq_len=int(f.require(f"{arch}.context_length")),
        bias=_has_bias(f),
        tie_embeddings=not f.has("output.weight"),
    )
    if arch == "llama":
        rotary = int(f.get("llama.rope.dimension_count", head_dim))
        if rotary != head_dim:
            raise UserError(
                f"{f.path} rotates {rotary} of {head_dim} channels per head (partial rotary), "
                "which lmforge does not support"
            )
        theta = _f32(f.get("llama.rope.freq_base", 10000.0))
        eps = f.get("llama.attention.layer_norm_rms_epsilon", 1e-5)
        fields.update(position="rope", rope_theta=theta, norm="rmsnorm", mlp="swiglu")
        fields.update(norm_eps=_f32(eps), rope_scaling=_rope_scaling(f, head_dim, theta))
    else:
        eps = f.get("gpt2.attention.layer_norm_epsilon", 1e-5)
        mlp = f.get("lmforge.mlp", "gelu_tanh")  # llama.cpp's GPT-2 uses the tanh GELU
        fields.update(position="learned", norm="layernorm", mlp=mlp, norm_eps=_f32(eps))
    try:
        return GPTConfig(**fields)
    except ValueError as e:
        raise UserError(f"{f.path}: its metadata describes an invalid model ({e})") from None


def _f32(value: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-5, not 9.99e-06)."""
    return float(str(np.float32(value)))


def _heads(f: GGUFFile, key: str, default: int | None = None) -> int:
    full_key = f"{f.architecture}.attention.{key}"
    value = f.require(full_key) if default is None else f.get(full_key, default)
    if isinstance(value, list):  # per-layer counts: fine only if they are all the same
        if len(set(value)) != 1:
            raise UserError(f"{f.path}: layers have different attention.{key} ({value[:4]}...)")
        value = value[0]
    return int(value)


def _has_bias(f: GGUFFile) -> bool:
    """True if any bias tensor holds a nonzero value (all-zero biases are read as none)."""
    return any(n.endswith(".bias") and np.any(f.tensor(n)) for n in f.tensors)


def _rope_scaling(f: GGUFFile, head_dim: int, theta: float) -> dict | None:
    """`GPTConfig.rope_scaling` from `llama.rope.scaling.*` or a `rope_freqs` tensor."""
    kind = f.get("llama.rope.scaling.type", "none")
    if f.has(ROPE_FREQS):
        return _llama3_scaling(f, head_dim, theta)
    if kind == "linear":
        return {"rope_type": "linear", "factor": _f32(f.require("llama.rope.scaling.factor"))}
    if kind != "none":
        raise UserError(f"{f.path} uses rope scaling {kind!r}; lmforge supports linear and llama3")
    return None


def _llama3_scaling(f: GGUFFile, head_dim: int, theta: float) -> dict:
    """Llama 3 rope scaling whose per-frequency factors equal the file's `rope_freqs` tensor."""
    factors = f.tensor(ROPE_FREQS)  # (D/2,): llama.cpp divides frequency i by factors[i]
    saved = f.get("lmforge.rope_scaling")
    if saved:
        scaling = json.loads(saved)
    else:
        scaling = {"rope_type": "llama3", "factor": float(factors.max()), **_LLAMA3_DEFAULTS}
    if factors.shape != (head_dim // 2,) or not np.allclose(
        rope_factors(head_dim, theta, scaling), factors, rtol=1e-4
    ):
        raise UserError(
            f"{f.path}: its rope_freqs tensor is not a Llama 3 rope scaling lmforge can express"
        )
    return scaling


def state_from_gguf(
    f: GGUFFile, cfg: GPTConfig, expected: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """lmforge state dict with the names and shapes of `expected`, read from the file."""
    return dict(iter_state_from_gguf(f, cfg, expected))


def iter_state_from_gguf(
    f: GGUFFile, cfg: GPTConfig, expected: dict[str, torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, float32 tensor) pairs of `state_from_gguf`, dequantized one at a time, so that
    a consumer that keeps each in another form (peft/qlora.py: NF4) never holds them all."""
    pending: dict[str, np.ndarray] = {}  # q, k, v of a fused "gpt2" tensor not yet taken
    used = {n for n in f.tensors if n.endswith(".bias") and not cfg.bias} | {ROPE_FREQS}
    used |= {n for n in f.tensors if n.endswith(("attn_qkv.weight", "attn_qkv.bias"))}
    for name, ref in expected.items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        source = gguf_name(name)
        used.add(source)
        kind = source.rsplit(".", 2)[-2]
        if f.architecture == "gpt2" and kind in QKV and source not in pending:
            pending.update(_split_qkv(f, cfg, source))
        if source in pending:
            value = pending.pop(source)
        elif f.has(source):
            value = f.tensor(source)
        elif name.endswith(".bias"):  # some biases of a biased model: the others are zero
            value = np.zeros(tuple(ref.shape), dtype=np.float32)
        else:
            raise UserError(f"{f.path} lacks the tensor {source}; it is not a complete model")
        if f.architecture == "llama" and kind in ("attn_q", "attn_k"):
            heads = cfg.num_heads if kind == "attn_q" else cfg.num_kv_heads
            value = from_interleaved(value, heads)
        if value.shape != tuple(ref.shape):
            raise UserError(
                f"{f.path}: tensor {source} has shape {value.shape}, its metadata implies "
                f"{tuple(ref.shape)}"
            )
        yield name, torch.from_numpy(value)
    unused = sorted(set(f.tensors) - used)
    if unused:
        raise UserError(f"{f.path} holds tensors lmforge has no place for: {', '.join(unused[:4])}")


def _split_qkv(f: GGUFFile, cfg: GPTConfig, source: str) -> dict[str, np.ndarray]:
    """`blk.N.attn_{q,k,v}.KIND` from the fused `blk.N.attn_qkv.KIND` of a "gpt2" file, for the
    layer and kind (weight or bias) of `source`; empty if the file has no such fused tensor."""
    block, _, kind = source.rsplit(".", 2)
    fused = f"{block}.attn_qkv.{kind}"
    if not f.has(fused):
        return {}
    used_names = [f"{block}.{n}.{kind}" for n in QKV]
    sizes = np.cumsum([cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim])
    parts = np.split(f.tensor(fused), sizes)  # (Q + 2 KV, C) -> 3 x (rows, C)
    return dict(zip(used_names, parts))


# ------------------------------------------------------------------------------------- export
def save_gguf(
    model: GPT,
    tokenizer: Tokenizer,
    path: str | Path,
    dtype: str = "f32",
    *,
    name: str | None = None,
) -> Path:
    """Write `model` and `tokenizer` (with its chat template) as one GGUF file, atomically.

    dtype: "f32", "f16" or "q8_0" for the matrices (norms and biases stay f32). `name` is
    `general.name` (default: the file name without extension).
    """
    if dtype not in DTYPES:
        raise UserError(f"GGUF export dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model = getattr(model, "_orig_mod", getattr(model, "module", model))  # unwrap compile / DDP
    cfg = model.config
    arch = architecture_of(cfg)
    tensors = state_to_gguf(model_state(model), cfg, arch)
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = GGUFWriter(tmp, arch)
        try:
            writer.add_name(name or path.stem)
            writer.add_file_type(_FILE_TYPES[dtype])
            writer.add_quantization_version(GGML_QUANT_VERSION)
            _add_hyperparameters(writer, cfg, arch)
            add_tokenizer(writer, tokenizer, cfg.vocab_size)
            for tensor_name, values in tensors.items():
                _add_tensor(writer, tensor_name, values, dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path


def state_to_gguf(
    state: dict[str, torch.Tensor], cfg: GPTConfig, arch: str
) -> dict[str, np.ndarray]:
    """GGUF tensors (float32, in file order) from an lmforge state dict."""
    out: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        values = tensor.detach().to("cpu", torch.float32).numpy()
        target = gguf_name(name)
        kind = target.rsplit(".", 2)[-2]
        if arch == "llama" and kind in ("attn_q", "attn_k"):
            values = to_interleaved(values, cfg.num_heads if kind == "attn_q" else cfg.num_kv_heads)
        if arch == "gpt2" and kind in QKV:
            if kind == "attn_q":  # fuse q, k, v (in this order) when q comes along
                parts = [state[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
                fused = torch.cat(parts).to(torch.float32).numpy()  # (Q + 2 KV, C)
                out[target.replace("attn_q", "attn_qkv")] = fused
            continue
        out[target] = values
    if arch == "gpt2" and not cfg.bias:
        out = _with_zero_biases(out)
    if cfg.rope_scaling is not None and cfg.rope_scaling["rope_type"] == "llama3":
        out[ROPE_FREQS] = rope_factors(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    return out


def _with_zero_biases(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zero biases after every weight llama.cpp's "gpt2" expects one for."""
    out = {}
    for name, values in tensors.items():
        out[name] = values
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] in (*GPT2_BIASED, "output_norm"):
            out[f"{module}.bias"] = np.zeros(values.shape[0], dtype=np.float32)
    return out


def _add_hyperparameters(writer: GGUFWriter, cfg: GPTConfig, arch: str) -> None:
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    if arch == "gpt2":
        writer.add_layer_norm_eps(cfg.norm_eps)
        writer.add_string("lmforge.mlp", cfg.mlp)
        return
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    scaling = cfg.rope_scaling
    if scaling is not None and scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif scaling is not None:  # llama3: the rope_freqs tensor, and its parameters for lmforge
        writer.add_string("lmforge.rope_scaling", json.dumps(scaling))


def _add_tensor(writer: GGUFWriter, name: str, values: np.ndarray, dtype: str) -> None:
    """f32 for 1-D tensors and position embeddings, else `dtype` (Q8_0 needs rows % 32 == 0)."""
    if dtype == "f32" or values.ndim == 1 or name.startswith("position_embd"):
        writer.add_tensor(name, values.astype(np.float32))
    elif dtype == "q8_0" and values.shape[-1] % 32 == 0:
        q8 = GGMLQuantizationType.Q8_0
        writer.add_tensor(name, quantize(values.astype(np.float32), q8), raw_dtype=q8)
    else:
        writer.add_tensor(name, values.astype(np.float16))
