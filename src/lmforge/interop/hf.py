"""Hugging Face model directories to and from lmforge: `load_hf` and `save_hf`.

A Hugging Face directory (`save_pretrained` output) holds `config.json`, the weights as
`model.safetensors` or as shards listed in `model.safetensors.index.json`, and optionally
`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json`.
The architecture (`architectures[0]`, else `model_type`) picks the converter:

    GPT2LMHeadModel / gpt2                               -> interop/hf_gpt2.py
    LlamaForCausalLM / llama, MistralForCausalLM / mistral -> interop/hf_llama.py
    BertForMaskedLM / bert                               -> interop/hf_bert.py
    T5ForConditionalGeneration / t5                      -> interop/hf_t5.py

and an export picks the converter by model family (`EXPORTERS`): BERT for the bert family, T5 for
the t5 family, and for the gpt family GPT-2 for learned positions and Llama for rotary ones.

Design decisions
- Weights are only read from safetensors, never unpickled: a directory with only
  `pytorch_model.bin` is refused with the fix (re-save with `safe_serialization=True`).
- Weights are converted to fp32 on load (bf16 and f16 checkpoints are common); `save_hf` writes the
  dtype asked for.
- Every file is written atomically; `config.json` is written last, so a directory with a new
  `config.json` has all its new weights.
- Special tokens: a tokenizer's `bos_token` / `eos_token` (strings) are read from
  `tokenizer_config.json` (or the ids in `generation_config.json` / `config.json`) and set on the
  loaded `Tokenizer` as attributes; on export they go to `tokenizer_config.json`,
  `generation_config.json` and `config.json`. Without them the end-of-sequence token is
  `<|endoftext|>` when the vocabulary has it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.fileio import write_json_atomic
from lmforge.interop import hf_bert, hf_gpt2, hf_llama, hf_t5
from lmforge.models import registry
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.loading import (
    build_loaded,
    check_vocab,
    load_safetensors,
    model_state,
    save_safetensors,
)
from lmforge.tokenizer import EOS_TOKEN, Tokenizer
from lmforge.tokenizer.core import TOKENIZER_CONFIG_FILE

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILE = "tokenizer.json"
GENERATION_CONFIG_FILE = "generation_config.json"

# architectures[0] or model_type -> converter module
CONVERTERS: dict[str, ModuleType] = {
    "GPT2LMHeadModel": hf_gpt2,
    "gpt2": hf_gpt2,
    "LlamaForCausalLM": hf_llama,
    "llama": hf_llama,
    "MistralForCausalLM": hf_llama,
    "mistral": hf_llama,
    "BertForMaskedLM": hf_bert,
    "bert": hf_bert,
    "T5ForConditionalGeneration": hf_t5,
    "t5": hf_t5,
}
SUPPORTED = (
    "GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, BertForMaskedLM, "
    "T5ForConditionalGeneration"
)
# model family -> (config -> the converter module that exports it)
EXPORTERS: dict[str, Callable[[Any], ModuleType]] = {
    "gpt": lambda cfg: hf_llama if cfg.position == "rope" else hf_gpt2,
    "bert": lambda cfg: hf_bert,
    "t5": lambda cfg: hf_t5,
}
# tokenizer_config.json keys of BERT's special tokens (written when the vocabulary has them)
WORDPIECE_SPECIALS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
# and of T5's (a Unigram tokenizer's) padding and unknown tokens
UNIGRAM_SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>"}
EXPORT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------------------- load
def load_hf(directory: str | Path) -> tuple[GPT | nn.Module, Tokenizer | None]:
    """The fp32 model (eval mode, CPU) and tokenizer (None without `tokenizer.json`) of a
    Hugging Face model directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"Hugging Face model directory not found: {directory}")
    hf_config = _read_json(directory / CONFIG_FILE, what="a Hugging Face model directory")
    converter = converter_for(hf_config, directory / CONFIG_FILE)
    cfg = _config_from_hf(converter, hf_config, directory / CONFIG_FILE)
    hf_state = read_weights(directory)
    try:
        state = converter.state_from_hf(hf_state, cfg)
    except UserError as e:
        raise UserError(f"{directory}: {e}") from None
    model = build_loaded(cfg, state, directory)
    tokenizer = load_tokenizer(directory, hf_config)
    if tokenizer is not None:
        check_vocab(tokenizer, cfg, directory)
    return model, tokenizer


def converter_for(hf_config: dict, where: Path) -> ModuleType:
    """The converter module for a config.json's architecture (a `UserError` if unsupported)."""
    archs = hf_config.get("architectures") or []
    name = archs[0] if archs else hf_config.get("model_type")
    if name is None:
        raise UserError(f"{where} names no architecture (architectures / model_type)")
    if name not in CONVERTERS:
        raise UserError(f"{where}: unsupported architecture {name!r}; supported: {SUPPORTED}")
    return CONVERTERS[name]


def _config_from_hf(converter: ModuleType, hf_config: dict, where: Path) -> GPTConfig:
    try:
        return converter.config_from_hf(hf_config)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    except KeyError as e:
        raise UserError(f"{where} lacks the field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{where} describes a model lmforge cannot build: {e}") from None


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards of its index, floats as fp32."""
    if (directory / WEIGHTS_FILE).is_file():
        state = load_safetensors(directory / WEIGHTS_FILE)
    elif (directory / WEIGHTS_INDEX_FILE).is_file():
        state = _read_shards(directory)
    elif any((directory / name).is_file() for name in PICKLE_FILES):
        raise UserError(
            f"{directory} has only pytorch_model.bin weights; lmforge reads only safetensors "
            "(it never unpickles files): re-save the model with save_pretrained(..., "
            "safe_serialization=True)"
        )
    else:
        raise UserError(f"no weights in {directory}: {WEIGHTS_FILE} not found")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _read_shards(directory: Path) -> dict[str, torch.Tensor]:
    index = _read_json(directory / WEIGHTS_INDEX_FILE, what="a sharded checkpoint")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{directory / WEIGHTS_INDEX_FILE} has no weight_map; re-save the model")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(load_safetensors(directory / shard))  # missing/truncated: a UserError
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise UserError(f"the shards in {directory} lack tensor {missing[0]!r} of their index")
    return state


def load_tokenizer(directory: Path, hf_config: dict | None = None) -> Tokenizer | None:
    """`tokenizer.json` with its chat template and bos/eos tokens, or None if there is none."""
    if not (directory / TOKENIZER_FILE).is_file():
        return None
    tokenizer = Tokenizer.from_file(directory)  # reads chat_template.jinja if present
    tok_config = {}
    if (directory / TOKENIZER_CONFIG_FILE).is_file():
        tok_config = _read_json(directory / TOKENIZER_CONFIG_FILE, what="a tokenizer config")
    if tokenizer.chat_template is None:
        tokenizer.chat_template = _chat_template(directory, tok_config)
    # bos/eos named in tokenizer_config.json are already set by `Tokenizer.from_file`; else the ids
    ids = {**(hf_config or {}), **_optional_json(directory / GENERATION_CONFIG_FILE)}
    for name in ("bos_token", "eos_token"):
        if getattr(tokenizer, name) is not None:
            continue
        token_id = ids.get(f"{name}_id")
        token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id
        token = tokenizer.id_to_token(token_id) if isinstance(token_id, int) else None
        if token is not None and tokenizer.token_to_id(token) is not None:
            setattr(tokenizer, name, token)
    return tokenizer


def _chat_template(directory: Path, tok_config: dict) -> str | None:
    """The template of `tokenizer_config.json` (a string, or named templates: "default" or the
    first), else of `chat_template.json`."""
    template = tok_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is None:
        template = _optional_json(directory / "chat_template.json").get("chat_template")
    return template if isinstance(template, str) else None


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"{path.parent} is not {what}: {path.name} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-create or re-download it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; re-create or re-download it")
    return data


def _optional_json(path: Path) -> dict:
    return _read_json(path, what="") if path.is_file() else {}


# --------------------------------------------------------------------------------------- save
def save_hf(
    model: GPT | nn.Module,
    tokenizer: Tokenizer | None,
    directory: str | Path,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `model` (and `tokenizer`) as a Hugging Face directory that `transformers` loads:
    GPT-2 for learned positions, Llama for rotary ones, BertForMaskedLM for BERT. Returns the
    directory."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    if dtype not in EXPORT_DTYPES:
        raise UserError(f"cannot export Hugging Face weights as {dtype}; use fp32, bf16 or f16")
    cfg = model.config
    family = registry.family_of(cfg).name
    if family not in EXPORTERS:
        raise UserError(f"cannot export a {family} model as a Hugging Face directory")
    converter = EXPORTERS[family](cfg)
    hf_config = converter.config_to_hf(cfg)  # refuses what the architecture cannot express
    directory = Path(directory)
    if tokenizer is not None:
        check_vocab(tokenizer, cfg, f"the export to {directory}")
    specials = special_tokens(tokenizer)
    ids = {f"{k}_id": tokenizer.token_to_id(v) for k, v in specials.items() if v is not None}

    directory.mkdir(parents=True, exist_ok=True)
    state = converter.state_to_hf(model_state(model), cfg)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_safetensors(state, directory / WEIGHTS_FILE, {"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(directory)  # tokenizer.json (+ chat_template.jinja)
        write_json_atomic(directory / TOKENIZER_CONFIG_FILE, _tokenizer_config(tokenizer, cfg))
    generation = {**getattr(converter, "generation_config", lambda cfg: {})(cfg), **ids}
    if generation:  # T5 adds its decoder start token, which `generate` needs
        write_json_atomic(directory / GENERATION_CONFIG_FILE, generation)
    dtype_name = str(dtype).removeprefix("torch.")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # T5's config sets pad and eos
        hf_config.setdefault(key, None)
    hf_config.update(ids, dtype=dtype_name, torch_dtype=dtype_name)
    write_json_atomic(directory / CONFIG_FILE, hf_config)
    return directory


def special_tokens(tokenizer: Tokenizer | None) -> dict[str, str | None]:
    """{"bos_token": ..., "eos_token": ...}: the tokenizer's own, else `<|endoftext|>` as eos."""
    if tokenizer is None:
        return {"bos_token": None, "eos_token": None}
    eos_default = EOS_TOKEN if tokenizer.token_to_id(EOS_TOKEN) is not None else None
    out = {
        "bos_token": getattr(tokenizer, "bos_token", None),
        "eos_token": getattr(tokenizer, "eos_token", None) or eos_default,
    }
    return {k: v if v and tokenizer.token_to_id(v) is not None else None for k, v in out.items()}


def _tokenizer_config(tokenizer: Tokenizer, cfg: GPTConfig) -> dict:
    """`tokenizer_config.json` for `transformers.PreTrainedTokenizerFast` over tokenizer.json."""
    config: dict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    config.update({k: v for k, v in special_tokens(tokenizer).items() if v is not None})
    config.update(
        {k: v for k, v in WORDPIECE_SPECIALS.items() if tokenizer.token_to_id(v) is not None}
    )
    config.update(
        {k: v for k, v in UNIGRAM_SPECIALS.items() if tokenizer.token_to_id(v) is not None}
    )
    if tokenizer.chat_template is not None:
        config["chat_template"] = tokenizer.chat_template
    return config
