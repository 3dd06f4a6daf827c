"""The decoder model: presets, shapes, KV-cached decoding, padded batches, save/load."""

import json

import pytest
import torch

from lmforge.errors import UserError
from lmforge.infer import Engine, SamplingParams
from lmforge.models import GPT, PRESETS, get_preset
from lmforge.models.loading import load_model, save_model


def tiny(preset: str, **kw) -> GPT:
    torch.manual_seed(0)
    model = GPT(get_preset(preset, vocab_size=97, max_seq_len=48, **kw)).eval()
    model.init_weights(std=0.3)  # large weights: varied, input-sensitive predictions
    return model


def greedy_without_cache(model: GPT, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_presets_build_and_count_parameters():
    assert set(PRESETS) >= {"gpt2", "gpt2-tiny", "llama-tiny", "smollm2-135m"}
    with torch.device("meta"):
        gpt2 = GPT(get_preset("gpt2"))
        smol = GPT(get_preset("smollm2-135m"))
    assert gpt2.num_params() == 124_439_808  # GPT-2 small, as published
    assert smol.num_params() == 134_515_008  # SmolLM2-135M
    assert gpt2.flops_per_token(1024) > 6 * gpt2.num_params(non_embedding=True)


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="unknown model preset"):
        get_preset("gpt5")


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_forward_shapes(preset):
    model = tiny(preset)
    x = torch.randint(0, 97, (3, 11))
    assert model(x).shape == (3, 11, 97)
    assert model(x, return_hidden=True).shape == (3, 11, model.config.hidden_size)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_kv_cached_decoding_equals_full_forward(preset):
    model = tiny(preset)
    x = torch.randint(0, 97, (2, 20))
    full = model(x)
    cache = model.new_cache(2, 20)
    with torch.no_grad():
        steps = [model(x[:, :12], cache=cache)] + [
            model(x[:, t : t + 1], cache=cache) for t in range(12, 20)
        ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_engine_greedy_equals_uncached_greedy_and_padding_is_invisible(preset):
    model = tiny(preset)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42], [3]]
    params = SamplingParams(temperature=0, max_new_tokens=12)
    batched = Engine(model).generate_ids(prompts, params)
    for prompt, out in zip(prompts, batched):
        assert out == greedy_without_cache(model, prompt, 12)


def test_engine_rejects_a_prompt_longer_than_the_context():
    model = tiny("gpt2-tiny")
    with pytest.raises(UserError, match="context"):
        Engine(model).generate_ids([[1] * 48], SamplingParams(max_new_tokens=4))


def test_engine_stops_at_stop_token_and_respects_context():
    model = tiny("gpt2-tiny")
    prompt = [5, 6, 7]
    ref = greedy_without_cache(model, prompt, 10)
    stop = ref[4]
    out = Engine(model).generate_ids(
        [prompt], SamplingParams(temperature=0, max_new_tokens=10), {stop}
    )
    assert out[0] == ref[: ref.index(stop) + 1]
    long = Engine(model).generate_ids([[1] * 40], SamplingParams(temperature=0, max_new_tokens=100))
    assert len(long[0]) == 8  # clipped at the 48-token context


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_save_and_load_round_trip(tmp_path, preset):
    model = tiny(preset)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    x = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(loaded(x), model(x))
    if model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.embed_tokens.weight


def test_corrupt_weights_are_a_user_error(tmp_path):
    save_model(tiny("gpt2-tiny"), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_model(tmp_path)


def test_missing_model_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope")


def test_config_of_an_unknown_family_or_with_unknown_keys_is_a_user_error(tmp_path):
    save_model(tiny("gpt2-tiny"), tmp_path)
    config = tmp_path / "config.json"
    good = json.loads(config.read_text())
    config.write_text(json.dumps({**good, "family": "rnn"}))
    with pytest.raises(UserError, match="unknown model family 'rnn'"):
        load_model(tmp_path)
    config.write_text(json.dumps({**good, "hidden_sise": 3}))
    with pytest.raises(UserError, match="not a valid model config.*hidden_sise"):
        load_model(tmp_path)
