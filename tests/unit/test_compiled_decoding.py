"""Compiled decoding (infer/compiled.py): the static KV cache, and compiled steps that give the same
logits and tokens as eager decoding, one graph for every cache length."""

import pytest
import torch
from helpers import tiny_gpt
from torch._dynamo.utils import counters

from lmforge.errors import UserError
from lmforge.infer import Engine, SamplingParams, compile_decoding
from lmforge.nn import StaticKVCache

VOCAB = 97


@pytest.fixture(scope="module")
def compiled_model():
    """A tiny Llama (grouped-query attention, RoPE, RMSNorm, SwiGLU, tied embeddings), compiled."""
    model = tiny_gpt("llama-tiny", VOCAB, seed=3, max_seq_len=128).eval()
    with torch.no_grad():  # larger weights than at initialisation: varied, confident tokens
        for p in model.parameters():
            p.mul_(4.0)
    return compile_decoding(model)


def eager_tokens(model, prompts, params):
    step, model.compiled_decode_step = model.compiled_decode_step, None
    try:
        return Engine(model).generate_ids(prompts, params)
    finally:
        model.compiled_decode_step = step


def test_static_cache_writes_one_token_at_its_slot_and_returns_every_position():
    cache = StaticKVCache(num_layers=2, batch_size=1, num_kv_heads=1, max_len=8, head_dim=4)
    prompt = torch.randn(1, 1, 3, 4)
    keys, _ = cache.update(0, prompt, prompt)  # several tokens: the ordinary path
    assert keys.shape == (1, 1, 3, 4)
    cache.advance(3)
    assert cache.length == 3 and cache.slot.tolist() == [3]
    token = torch.randn(1, 1, 1, 4)
    keys, values = cache.update(0, token, 2 * token)
    assert keys.shape == (1, 1, 8, 4)  # every position, for the caller's mask
    torch.testing.assert_close(keys[:, :, :3], prompt)
    torch.testing.assert_close(keys[:, :, 3:4], token)
    torch.testing.assert_close(values[:, :, 3:4], 2 * token)
    assert keys[:, :, 4:].abs().sum() == 0
    cache.advance(1)
    assert cache.length == 4


def test_compiled_steps_give_the_logits_of_a_full_forward_pass(compiled_model):
    model = compiled_model
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = model(ids)  # (2, 12, V)
        cache = model.new_cache(2, 12, static=True)
        model(ids[:, :5], cache=cache)
        for t in range(5, 12):
            mask = (torch.arange(12) <= t).expand(2, 1, 1, 12)
            positions = torch.full((2, 1), t)
            step = model.compiled_decode_step
            logits = step(model, ids[:, t : t + 1], positions, mask, cache)
            torch.testing.assert_close(logits, full[:, t], atol=1e-4, rtol=1e-4)
    assert cache.length == 12


def test_compiled_generation_matches_eager_for_padded_batches_and_one_token_prompts(
    compiled_model,
):
    model = compiled_model
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    sampled = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=12, seed=7)
    for prompts in ([[5, 6, 7, 8, 9], [10, 11]], [[3]]):  # left-padded rows; the one-token prefill
        for params in (greedy, sampled):
            expected = eager_tokens(model, prompts, params)
            assert Engine(model).generate_ids(prompts, params) == expected
            assert len({t for row in expected for t in row}) > 3  # not a constant stream


def test_one_graph_serves_every_cache_length(compiled_model, monkeypatch):
    model = compiled_model
    params = SamplingParams(temperature=0, max_new_tokens=6)
    Engine(model).generate_ids([[1, 2, 3]] * 3, params)  # compiled for this batch size if need be
    graphs = counters["stats"]["unique_graphs"]
    calls = []
    step = model.compiled_decode_step
    monkeypatch.setattr(model, "compiled_decode_step", lambda *args: calls.append(1) or step(*args))
    for length in (2, 9, 30):
        prompts = [list(range(1, length + 1))] * 3
        assert Engine(model).generate_ids(prompts, params) == eager_tokens(model, prompts, params)
    assert len(calls) == 3 * 5  # every decoding step was a compiled one
    assert counters["stats"]["unique_graphs"] == graphs  # and none compiled a new graph


def test_compile_failure_is_one_clear_error(monkeypatch, tmp_path):
    import torch._inductor.config as inductor_config

    model = compile_decoding(tiny_gpt("llama-tiny", VOCAB, seed=4, num_layers=1).eval())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing compiled to reuse
    torch._dynamo.reset()
    try:
        with (
            inductor_config.patch({"cpp.cxx": (None, "/bin/false")}),
            pytest.raises(UserError, match="compiling the decoding step failed.*without --compile"),
        ):
            Engine(model).generate_ids([[1, 2]], SamplingParams(temperature=0, max_new_tokens=3))
    finally:
        torch._dynamo.reset()


def test_compile_decoding_needs_a_decoder():
    from lmforge.models.bert import Bert, BertConfig

    bert = Bert(BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2))
    with pytest.raises(UserError, match="decoder"):
        compile_decoding(bert)


def test_compiled_gpt2_shape_matches_eager():
    """Learned positions, LayerNorm, biases (the products' baddbmm path), GELU MLP."""
    model = tiny_gpt("gpt2-tiny", VOCAB, seed=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    prompts = [[5, 6, 7], [8]]
    params = SamplingParams(temperature=0, max_new_tokens=10)
    expected = Engine(model).generate_ids(prompts, params)
    assert Engine(compile_decoding(model)).generate_ids(prompts, params) == expected
    assert len({t for row in expected for t in row}) > 3
