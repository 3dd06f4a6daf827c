"""The real SmolLM2-135M-Instruct (Q4_1 GGUF) through our importer agrees with `transformers`
reading the same file: the same dequantized weights, logits within 1e-3 (fp32), the same greedy
continuation and the same token ids. Our Q8_0 export of it reads back with the same tokenizer.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.data.sources import fetch
from lmforge.interop.gguf import load_gguf, save_gguf
from lmforge.interop.gguf_read import GGUFFile
from lmforge.interop.gguf_tokenizer import tokenizer_from_ggml

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.slow, pytest.mark.hf]

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    'from 1887 to 1889. Locally nicknamed "La dame de fer", it was constructed as the centerpiece '
    "of the 1889 World's Fair, and to crown the centennial anniversary of the French Revolution."
)
TEXTS = [
    PARAGRAPH,
    "Digits: 2024, 3.14159, 1,000,000 and x9y8.",
    "  leading and  double spaces\n\n\tnew lines, tabs\r\n",
    "unicode: héllo naïve 日本語 🙂 Ελληνικά",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def path():
    return fetch("smollm2-135m-instruct") / FILE


@pytest.fixture(scope="module")
def ours(path):
    return load_gguf(path)


@pytest.fixture(scope="module")
def theirs(path):
    directory = path.parent
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=FILE, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=FILE)
    return model.eval(), tokenizer


def test_config(ours, theirs):
    model, _ = ours
    hf = theirs[0].config
    cfg = model.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.max_seq_len) == (1536, 49152, 8192)
    assert cfg.tie_embeddings and hf.tie_word_embeddings
    assert cfg.norm_eps == pytest.approx(hf.rms_norm_eps, rel=1e-6)


@pytest.mark.parametrize(
    "ours_name, hf_name",
    [
        ("embed_tokens.weight", "model.embed_tokens.weight"),  # Q8_0
        ("layers.0.attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),  # permuted
        ("layers.7.attn.k_proj.weight", "model.layers.7.self_attn.k_proj.weight"),  # permuted, GQA
        ("layers.29.mlp.down_proj.weight", "model.layers.29.mlp.down_proj.weight"),  # Q4_1
        ("layers.3.attn_norm.weight", "model.layers.3.input_layernorm.weight"),  # F32
    ],
)
def test_same_dequantized_weights(ours, theirs, ours_name, hf_name):
    expected = theirs[0].state_dict()[hf_name]
    torch.testing.assert_close(ours[0].state_dict()[ours_name], expected, atol=1e-6, rtol=0)


def test_logits_match(ours, theirs):
    model, tokenizer = ours
    ids = torch.tensor([tokenizer.encode(PARAGRAPH)])
    with torch.no_grad():
        got = model(ids)
        expected = theirs[0](input_ids=ids).logits
    assert (got - expected).abs().max().item() < 1e-3


def test_greedy_continuation_matches(ours, theirs):
    model, tokenizer = ours
    prompt = tokenizer.encode(PARAGRAPH[:160])
    new = 24
    cache = model.new_cache(1, len(prompt) + new)
    tokens: list[int] = []
    with torch.no_grad():
        step = model(torch.tensor([prompt]), cache=cache)
        for _ in range(new):
            tokens.append(int(step[0, -1].argmax()))
            step = model(torch.tensor([[tokens[-1]]]), cache=cache)
        expected = (
            theirs[0]
            .generate(
                torch.tensor([prompt]), max_new_tokens=new, do_sample=False, min_new_tokens=new
            )[0, len(prompt) :]
            .tolist()
        )
    assert tokens == expected, (tokenizer.decode(tokens), tokenizer.decode(expected))


def test_tokenizer_matches(ours, theirs):
    tokenizer, hf = ours[1], theirs[1]
    for text in TEXTS:
        assert tokenizer.encode(text) == hf.encode(text, add_special_tokens=False), text
    assert tokenizer.vocab_size == len(hf) == 49152
    assert tokenizer.eos_token == hf.eos_token == "<|im_end|>"
    assert tokenizer.bos_token == hf.bos_token == "<|im_start|>"
    assert tokenizer.chat_template == hf.chat_template


def test_q8_0_export_round_trip(ours, tmp_path):
    model, tokenizer = ours
    path = save_gguf(model, tokenizer, tmp_path / "smollm2.gguf", dtype="q8_0")
    loaded, loaded_tokenizer = load_gguf(path)
    assert loaded.config == model.config
    # The embedding was Q8_0 already: quantizing its values again gives the same blocks.
    assert torch.equal(loaded.embed_tokens.weight, model.embed_tokens.weight)
    ids = torch.tensor([tokenizer.encode(PARAGRAPH)])
    with torch.no_grad():
        agree = (loaded(ids).argmax(-1) == model(ids).argmax(-1)).float().mean().item()
    assert agree > 0.95
    f = GGUFFile(path)
    assert f.get("tokenizer.ggml.pre") == "smollm" and f.get("tokenizer.ggml.eos_token_id") == 2
    rebuilt = tokenizer_from_ggml(f)  # from the llama.cpp keys, not tokenizer.huggingface.json
    for text in TEXTS:
        assert rebuilt.encode(text) == loaded_tokenizer.encode(text) == tokenizer.encode(text)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
