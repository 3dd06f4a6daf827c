"""Hugging Face directories: `load_hf` / `save_hf` round trips, shards, tokenizer and chat template,
RoPE scaling configs, and one clear `UserError` line for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.errors import UserError
from lmforge.interop.hf import load_hf, save_hf
from lmforge.interop.hf_llama import rope_from_hf
from lmforge.models import GPT, GPTConfig
from lmforge.models.loading import save_safetensors
from lmforge.nn.rope import inverse_frequencies
from lmforge.tokenizer import train_bpe

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False)


def tiny(**fields) -> GPT:
    torch.manual_seed(0)
    base = dict(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, max_seq_len=16)
    return GPT(GPTConfig(**{**base, **fields})).eval()


def tokenizer():
    text = ["To be, or not to be, that is the question. " * 20, "Whether 'tis nobler " * 20]
    tok = train_bpe(text, vocab_size=290, show_progress=False)
    tok.chat_template = TEMPLATE
    return tok


def same_logits(a: GPT, b: GPT) -> None:
    x = torch.arange(12).view(1, 12)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-6, rtol=1e-6)


def error_of(fn, *args) -> str:
    with pytest.raises(UserError) as e:
        fn(*args)
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture
def exported(tmp_path) -> Path:
    directory = tmp_path / "hf"
    save_hf(tiny(), None, directory)
    return directory


# ------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fields", [{}, dict(bias=False, mlp="gelu"), LLAMA])
def test_save_then_load_gives_the_same_model(fields, tmp_path):
    model = tiny(**fields)
    save_hf(model, None, tmp_path)
    back, tok = load_hf(tmp_path)
    assert tok is None
    same_logits(model, back)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM" if fields == LLAMA else "GPT2LMHeadModel"]


def test_sharded_checkpoint_loads(exported):
    from safetensors.torch import load_file

    state = load_file(exported / "model.safetensors")
    (exported / "model.safetensors").unlink()
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[:5],
        "model-00002-of-00002.safetensors": names[5:],
    }
    for file, keys in shards.items():
        save_safetensors({k: state[k] for k in keys}, exported / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (exported / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    back, _ = load_hf(exported)
    same_logits(tiny(), back)
    (exported / "model-00002-of-00002.safetensors").unlink()
    assert "model-00002-of-00002.safetensors" in error_of(load_hf, exported)


def test_bf16_weights_load_as_fp32(tmp_path):
    save_hf(tiny(**LLAMA), None, tmp_path, dtype=torch.bfloat16)
    back, _ = load_hf(tmp_path)
    assert {p.dtype for p in back.parameters()} == {torch.float32}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"


def test_tokenizer_and_chat_template_round_trip(tmp_path):
    tok = tokenizer()
    save_hf(tiny(), tok, tmp_path)
    tok_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_config["eos_token"] == "<|endoftext|>" and tok_config["chat_template"] == TEMPLATE
    eos_id = tok.token_to_id("<|endoftext|>")
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == eos_id
    _, back = load_hf(tmp_path)
    text = "To be, or not to be<|im_end|> Whether"
    assert back.encode(text) == tok.encode(text)
    assert back.chat_template == TEMPLATE and back.eos_token == "<|endoftext|>"
    (tmp_path / "chat_template.jinja").unlink()  # the template of tokenizer_config.json remains
    assert load_hf(tmp_path)[1].chat_template == TEMPLATE


def test_special_tokens_come_from_tokenizer_config(tmp_path):
    save_hf(tiny(), tokenizer(), tmp_path)
    path = tmp_path / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(bos_token={"content": "<|im_start|>"}, eos_token="<|im_end|>")
    path.write_text(json.dumps(config))
    _, tok = load_hf(tmp_path)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    again = tmp_path / "again"
    save_hf(tiny(), tok, again)
    ids = json.loads((again / "generation_config.json").read_text())
    expected = {name: tok.token_to_id(token) for name, token in
                [("bos_token_id", "<|im_start|>"), ("eos_token_id", "<|im_end|>")]}  # fmt: skip
    assert ids == expected


@pytest.mark.hf
def test_transformers_tokenizer_reads_our_export(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = tokenizer()
    save_hf(tiny(), tok, tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in ["To be, or not to be", "  Whether 'tis<|endoftext|>nobler\n\n", "héllo wörld"]:
        assert hf_tok(text)["input_ids"] == tok.encode(text)
        assert hf_tok.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    assert hf_tok.eos_token == "<|endoftext|>"
    messages = [{"role": "user", "content": "Hi"}]
    rendered = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# ------------------------------------------------------------------------------- RoPE scaling
def test_rope_scaling_is_validated():
    with pytest.raises(ValueError, match="rope_type"):
        GPTConfig(**LLAMA, rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="keys"):
        GPTConfig(**LLAMA, rope_scaling={"rope_type": "llama3", "factor": 2.0})
    with pytest.raises(ValueError, match="position=rope"):
        GPTConfig(rope_scaling={"rope_type": "linear", "factor": 2.0})
    cfg = GPTConfig(**LLAMA, rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


def test_rope_scaling_frequencies():
    plain = inverse_frequencies(16, 10000.0)
    linear = inverse_frequencies(16, 10000.0, {"rope_type": "linear", "factor": 4.0})
    torch.testing.assert_close(linear, plain / 4)
    llama3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
    scaled = inverse_frequencies(
        16, 10000.0, {"rope_type": "llama3", **llama3, "original_max_position_embeddings": 64}
    )
    wavelength = 2 * torch.pi / plain
    assert torch.equal(scaled[wavelength < 16], plain[wavelength < 16])  # short: kept
    torch.testing.assert_close(scaled[wavelength > 64], plain[wavelength > 64] / 8)  # long: / 8
    between = (wavelength >= 16) & (wavelength <= 64)
    assert between.any() and ((scaled < plain) & (scaled > plain / 8))[between].all()


def test_rope_configs_of_both_transformers_versions():
    v4 = {"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    assert rope_from_hf(v4) == (5e5, {"rope_type": "linear", "factor": 2.0})
    params = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
    v5 = {
        "max_position_embeddings": 128,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **params},
    }
    theta, scaling = rope_from_hf(v5)
    assert theta == 5e5 and scaling["original_max_position_embeddings"] == 128
    assert rope_from_hf({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}) == (
        1e4,
        None,
    )


# ---------------------------------------------------------------------------------- bad input
def test_missing_directory(tmp_path):
    assert "not found" in error_of(load_hf, tmp_path / "nope")


def test_missing_config(exported):
    (exported / "config.json").unlink()
    assert "config.json not found" in error_of(load_hf, exported)


def test_missing_weights(exported):
    (exported / "model.safetensors").unlink()
    assert "model.safetensors not found" in error_of(load_hf, exported)


def test_only_pytorch_bin_is_refused(exported):
    (exported / "model.safetensors").rename(exported / "pytorch_model.bin")  # never unpickled
    message = error_of(load_hf, exported)
    assert "pytorch_model.bin" in message and "safetensors" in message


def test_truncated_safetensors(exported):
    path = exported / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated" in error_of(load_hf, exported)


def test_bad_json(exported):
    (exported / "config.json").write_text("{not json")
    assert "not valid JSON" in error_of(load_hf, exported)


def edit_config(directory: Path, **fields) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_unknown_architecture(exported):
    edit_config(exported, architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    message = error_of(load_hf, exported)
    assert "Qwen2ForCausalLM" in message and "LlamaForCausalLM" in message


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(attention_bias=True), "attention_bias"),
        (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "yarn"),
        (dict(sliding_window=8), "sliding_window"),
        (dict(num_attention_heads=5), "num_heads"),
    ],
)
def test_llama_field_we_cannot_run(fields, named, tmp_path):
    save_hf(tiny(**LLAMA), None, tmp_path)
    edit_config(tmp_path, **fields)
    assert named in error_of(load_hf, tmp_path)


def test_gpt2_field_we_cannot_run(exported):
    edit_config(exported, activation_function="relu")
    assert "activation_function" in error_of(load_hf, exported)
    edit_config(exported, activation_function="gelu_new", scale_attn_by_inverse_layer_idx=True)
    assert "scale_attn_by_inverse_layer_idx" in error_of(load_hf, exported)


def test_missing_config_field(exported):
    path = exported / "config.json"
    config = json.loads(path.read_text())
    del config["n_embd"]
    path.write_text(json.dumps(config))
    assert "n_embd" in error_of(load_hf, exported)


def test_weights_that_do_not_match_the_config(exported):
    edit_config(exported, n_layer=2)
    assert "h.1" in error_of(load_hf, exported)


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(position="rope", mlp="swiglu", bias=False), "norm"),  # rotary with LayerNorm
        (dict(num_kv_heads=1), "num_kv_heads"),
        (dict(head_dim=8), "head_dim"),
        (dict(norm="rmsnorm"), "norm"),
        ({**LLAMA, "bias": True}, "bias"),
    ],
)
def test_export_refuses_what_the_architecture_cannot_express(fields, named, tmp_path):
    message = error_of(save_hf, tiny(**fields), None, tmp_path)
    assert f"model.{named}" in message
    assert not (tmp_path / "config.json").exists()


def test_tokenizer_larger_than_the_model(tmp_path):
    save_hf(tiny(), tokenizer(), tmp_path)
    save_hf(tiny(vocab_size=100), None, tmp_path)  # a smaller model beside the same tokenizer
    assert "tokenizer" in error_of(load_hf, tmp_path)
