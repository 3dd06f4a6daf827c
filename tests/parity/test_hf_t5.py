"""T5 parity with `transformers` (fp32, eval, atol 1e-4) through the production converters, both
directions: a random `T5ForConditionalGeneration` (state dict and `save_pretrained` directory) read
by lmforge, and a random lmforge T5 written by `save_hf` and read by `from_pretrained`. Two shapes:
original T5 (ReLU, tied and scaled LM head) and v1.1 (gated GELU, untied LM head, head_dim x heads
!= width, fewer decoder than encoder layers). Encoder inputs are padded."""

import pytest
import torch

from lmforge.interop.hf_t5 import config_from_hf, state_from_hf
from lmforge.models.loading import load_model_state
from lmforge.models.t5 import T5, T5Config

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

SHAPES = {
    "relu-tied": dict(
        vocab_size=99,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
    ),
    "gated-gelu-untied": dict(
        vocab_size=101,
        d_model=48,
        d_kv=12,
        d_ff=80,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=3,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
}


def hf_model(shape: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.T5Config(**SHAPES[shape], dropout_rate=0.0, decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if not SHAPES[shape]["tie_word_embeddings"]:  # transformers 5 ties unless told otherwise
        model.lm_head.weight = torch.nn.Parameter(0.2 * torch.randn_like(model.lm_head.weight))
    return model


def inputs(vocab_size: int):
    g = torch.Generator().manual_seed(1)
    source = torch.randint(2, vocab_size, (2, 26), generator=g)
    mask = torch.ones(2, 26, dtype=torch.long)
    mask[1, 19:] = 0  # the second source is padded
    source[1, 19:] = 0
    target = torch.randint(2, vocab_size, (2, 9), generator=g)
    return source, mask, target


def hf_logits(model, source, mask, target) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits


@pytest.mark.parametrize("shape", list(SHAPES))
def test_logits_match_t5forconditionalgeneration(shape):
    hf = hf_model(shape)
    cfg = config_from_hf(hf.config.to_dict())
    assert cfg.tie_embeddings == SHAPES[shape]["tie_word_embeddings"]
    ours = T5(cfg).eval()
    load_model_state(ours, state_from_hf(hf.state_dict(), cfg), "hf")
    source, mask, target = inputs(cfg.vocab_size)
    expected = hf_logits(hf, source, mask, target)
    with torch.no_grad():
        got = ours(source, mask, target)
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_save_pretrained_directory_loads_into_lmforge(shape, tmp_path):
    from lmforge.interop.hf import load_hf

    hf = hf_model(shape)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours, tokenizer = load_hf(tmp_path)
    assert tokenizer is None and isinstance(ours, T5)
    source, mask, target = inputs(ours.config.vocab_size)
    with torch.no_grad():
        got = ours(source, mask, target)
    torch.testing.assert_close(got, hf_logits(hf, source, mask, target), atol=1e-4, rtol=1e-4)


OUR_SHAPES = {
    "relu-tied": dict(mlp="relu", tie_embeddings=True),
    "gated-gelu-untied": dict(mlp="gated-gelu", tie_embeddings=False, num_decoder_layers=3),
}


@pytest.mark.parametrize("shape", list(OUR_SHAPES))
def test_save_hf_loads_in_transformers(shape, tmp_path):
    from lmforge.interop.hf import save_hf

    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=97,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=48,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        **OUR_SHAPES[shape],
    )
    ours = T5(cfg).eval()
    save_hf(ours, None, tmp_path)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    source, mask, target = inputs(cfg.vocab_size)
    with torch.no_grad():
        got = ours(source, mask, target)
    expected = hf_logits(hf, source, mask, target)
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_matches_transformers_generate(num_beams, tmp_path):
    """Greedy and beam search (early stopping) pick the same tokens as `generate` on our export."""
    from lmforge.infer import SamplingParams
    from lmforge.infer.seq2seq import beam_search, sample_ids
    from lmforge.interop.hf import save_hf

    for seed in range(3):
        torch.manual_seed(seed)
        cfg = T5Config(
            vocab_size=40,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=48,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            tie_embeddings=False,
        )
        ours = T5(cfg).eval()
        with torch.no_grad():  # larger logits: distributions neither flat nor one-hot
            ours.lm_head.weight.mul_(4.0)
        save_hf(ours, None, tmp_path / str(seed))
        hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / str(seed)).eval()
        source = torch.randint(2, 40, (3, 9), generator=torch.Generator().manual_seed(seed))
        mask = torch.ones_like(source)
        source[1, 6:], mask[1, 6:] = 0, 0
        out = hf.generate(
            input_ids=source,
            attention_mask=mask,
            max_new_tokens=10,
            do_sample=False,
            num_beams=num_beams,
            early_stopping=True,
        )
        expected = [row[1:] for row in out.tolist()]  # after the decoder start token
        expected = [row[: row.index(1)] if 1 in row else row for row in expected]  # up to EOS
        if num_beams == 1:
            params = SamplingParams(temperature=0, max_new_tokens=10)
            got = sample_ids(ours, source, mask.bool(), params, eos_id=1)
        else:
            got = beam_search(ours, source, mask.bool(), num_beams, 10, eos_id=1)
        assert got == expected
