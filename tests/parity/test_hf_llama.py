"""Llama-family parity with `transformers`, both ways, through the production converters.

(a) a random `LlamaForCausalLM` -> `save_pretrained` -> our `load_hf` gives the same logits;
(b) a random lmforge Llama-style GPT -> our `save_hf` -> `AutoModelForCausalLM.from_pretrained`
gives the same logits. fp32, atol 1e-4; shapes cover MHA and GQA, tied and untied embeddings,
head_dim != hidden/heads, a non-default rope_theta and llama3 / linear RoPE scaling (compared at
positions beyond original_max_position_embeddings).
"""

import copy

import pytest
import torch
from safetensors.torch import load_file

from lmforge.interop.hf import load_hf, save_hf
from lmforge.models import GPT, GPTConfig

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

LLAMA3 = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
)
LINEAR = dict(rope_type="linear", factor=4.0)
T = 60  # sequence length of the comparisons: beyond original_max_position_embeddings=16

# Hugging Face LlamaConfig fields of each shape.
HF_SHAPES = {
    "mha-tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "gqa-untied-headdim": dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, rope_theta=500000.0
    ),
    "mqa-llama3": dict(
        num_attention_heads=4, num_key_value_heads=1, rope_scaling=LLAMA3, rope_theta=5000.0
    ),
    "gqa-linear-tied": dict(
        num_attention_heads=8,
        num_key_value_heads=2,
        rope_scaling=LINEAR,
        tie_word_embeddings=True,
    ),
}
# lmforge GPTConfig fields of each shape.
OUR_SHAPES = {
    "mha-tied": dict(num_heads=4, tie_embeddings=True),
    "gqa-untied-headdim": dict(num_heads=4, num_kv_heads=2, head_dim=24, rope_theta=500000.0),
    "mqa-llama3": dict(num_heads=4, num_kv_heads=1, rope_scaling=LLAMA3, rope_theta=5000.0),
    "gqa-linear": dict(num_heads=8, num_kv_heads=2, rope_scaling=LINEAR),
}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights large enough that the logits are O(1) and every detail of the model shows."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "norm" in name:
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.15 * torch.randn(p.shape, generator=g))


def hf_llama(seed: int = 0, **fields) -> "transformers.LlamaForCausalLM":
    base = dict(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
    )
    fields = copy.deepcopy(fields)  # transformers adds rope_theta to the rope_scaling it is given
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**base, **fields})).eval()
    randomize(model, seed)
    return model


def our_llama(seed: int = 0, **fields) -> GPT:
    base = dict(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        max_seq_len=64,
        position="rope",
        norm="rmsnorm",
        norm_eps=1e-5,
        mlp="swiglu",
        bias=False,
        tie_embeddings=False,
    )
    model = GPT(GPTConfig(**{**base, **fields})).eval()
    randomize(model, seed)
    return model


def tokens(vocab_size: int = 101, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", list(HF_SHAPES))
def test_transformers_save_pretrained_loads_into_lmforge(shape, tmp_path):
    hf = hf_llama(**HF_SHAPES[shape])
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours, tokenizer = load_hf(tmp_path)
    assert tokenizer is None
    x = tokens()
    with torch.no_grad():
        expected, got = hf(input_ids=x).logits, ours(x)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    scaling = HF_SHAPES[shape].get("rope_scaling")
    if scaling is not None:  # the scaling is loaded, and it matters at these positions
        assert ours.config.rope_scaling == scaling
        ours.rotary = type(ours.rotary)(ours.config.head_dim, T, ours.config.rope_theta)
        with torch.no_grad():
            assert (ours(x) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("shape", list(OUR_SHAPES))
def test_lmforge_export_loads_into_transformers(shape, tmp_path):
    ours = our_llama(**OUR_SHAPES[shape])
    save_hf(ours, None, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.tie_word_embeddings == ours.config.tie_embeddings
    x = tokens()
    with torch.no_grad():
        expected, got = ours(x), hf(input_ids=x).logits
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_mistral_without_sliding_window_loads(tmp_path):
    cfg = transformers.MistralConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=None,
    )
    hf = transformers.MistralForCausalLM(cfg).eval()
    randomize(hf)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours, _ = load_hf(tmp_path)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(input_ids=x).logits, atol=1e-4, rtol=1e-4)


def test_bf16_export_loads_back(tmp_path):
    ours = our_llama(**OUR_SHAPES["mqa-llama3"])
    save_hf(ours, None, tmp_path, dtype=torch.bfloat16)
    written = load_file(tmp_path / "model.safetensors")
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    rounded = our_llama(**OUR_SHAPES["mqa-llama3"])
    with torch.no_grad():  # the weights as written (not the rotary tables: those are rebuilt)
        for p in rounded.parameters():
            p.copy_(p.bfloat16().float())
    back, _ = load_hf(tmp_path)
    assert back.lm_head.weight.dtype == torch.float32
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = tokens()
    with torch.no_grad():
        expected = rounded(x)
        torch.testing.assert_close(back(x), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hf(input_ids=x).logits, expected, atol=1e-4, rtol=1e-4)
