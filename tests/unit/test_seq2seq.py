"""Text-to-text generation: beam search against exhaustive search, greedy == one beam, padded
batches == rows alone, seeded sampling."""

import itertools

import pytest
import torch

from lmforge.infer import SamplingParams
from lmforge.infer.seq2seq import beam_search, sample_ids
from lmforge.models.t5 import T5, T5Config

EOS = 1


def tiny_t5(vocab_size: int = 5, seed: int = 0) -> T5:
    """A random model whose next-token distributions are neither flat nor one-hot (an untied head
    with larger weights: a tiny tied T5 mostly repeats its input token)."""
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab_size,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        tie_embeddings=False,
    )
    model = T5(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    return model


def sources(vocab_size: int = 5):
    ids = torch.tensor([[2, 3, 4, 2, 1], [4, 4, 1, 0, 0]])
    return ids % vocab_size, ids != 0  # the second source is padded


@torch.no_grad()
def exhaustive_best(model, source, mask, steps: int, length_penalty: float) -> list[int]:
    """The best sequence over every sequence of at most `steps` tokens that ends at its first EOS
    (or is cut at `steps`), scored log p / length^length_penalty with full decoder passes."""
    V, start = model.config.vocab_size, model.config.decoder_start_token_id
    others = [t for t in range(V) if t != EOS]
    best, best_score = None, float("-inf")
    for length in range(1, steps + 1):
        for body in itertools.product(others, repeat=length - 1):
            for last in range(V):
                if length < steps and last != EOS:
                    continue  # unfinished and not cut: not a complete hypothesis
                seq = [*body, last]
                decoder_in = torch.tensor([[start, *seq[:-1]]])
                logp = model(source, mask, decoder_in)[0].log_softmax(-1)  # (length, V)
                score = sum(logp[i, t].item() for i, t in enumerate(seq)) / length**length_penalty
                if score > best_score:
                    best, best_score = seq, score
    return best[:-1] if best[-1] == EOS else best


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_beam_search_with_every_hypothesis_equals_exhaustive_search(seed, length_penalty):
    model, steps = tiny_t5(seed=seed), 3
    ids, mask = sources()
    beams = 4 ** (steps - 1) * 5  # every candidate of the last step is among the beams
    got = beam_search(model, ids, mask, beams, steps, EOS, length_penalty)
    for row in range(2):
        n = int(mask[row].sum())
        expected = exhaustive_best(model, ids[row : row + 1, :n], None, steps, length_penalty)
        assert got[row] == expected


def test_beam_search_finds_what_greedy_misses():
    model, (ids, mask) = tiny_t5(seed=1), sources()
    greedy = sample_ids(model, ids, mask, SamplingParams(temperature=0, max_new_tokens=3), EOS)
    assert beam_search(model, ids, mask, 80, 3, EOS)[1] != greedy[1]


def test_one_beam_is_greedy_and_padded_rows_decode_as_alone():
    model = tiny_t5(vocab_size=23, seed=2)
    ids = torch.tensor([[5, 9, 13, 2, 7, 1], [11, 4, 1, 0, 0, 0]])
    mask = ids != 0
    params = SamplingParams(temperature=0, max_new_tokens=12)
    greedy = sample_ids(model, ids, mask, params, EOS)
    assert beam_search(model, ids, mask, 1, 12, EOS) == greedy
    alone = sample_ids(model, ids[1:, :3], None, params, EOS)
    assert alone[0] == greedy[1]
    assert all(len(row) <= 12 and EOS not in row for row in greedy)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = tiny_t5(vocab_size=23, seed=3)
    ids = torch.tensor([[5, 9, 13, 2, 7, 1]])
    seeded = SamplingParams(temperature=1.0, max_new_tokens=10, seed=7)
    assert sample_ids(model, ids, None, seeded, EOS) == sample_ids(model, ids, None, seeded, EOS)
    top1 = SamplingParams(temperature=1.0, top_k=1, max_new_tokens=10, seed=7)
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    assert sample_ids(model, ids, None, top1, EOS) == sample_ids(model, ids, None, greedy, EOS)
