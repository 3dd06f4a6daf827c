"""Sampler properties: top-k and top-p keep exactly the right tokens; temperature 0 is greedy."""

import pytest
import torch

from lmforge.errors import UserError
from lmforge.infer.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    sample_next,
    top_k_filter,
    top_p_filter,
)


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 3.0, -2.0, 4.0]])
    kept = torch.isfinite(top_k_filter(logits, 3))[0].tolist()
    assert sum(kept) == 3
    assert kept[1] and kept[5]  # 5.0 and 4.0, plus one of the tied 3.0s
    assert not kept[0] and not kept[4]


def test_top_k_random_rows():
    torch.manual_seed(0)
    logits = torch.randn(16, 50)
    out = top_k_filter(logits, 7)
    for row, filtered in zip(logits, out):
        expected = set(row.topk(7).indices.tolist())
        assert set(torch.nonzero(torch.isfinite(filtered)).flatten().tolist()) == expected
        assert torch.equal(filtered[list(expected)], row[list(expected)])


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logits = probs.log()
    keep = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert keep(0.5) == [True, False, False, False, False]  # 0.5 reaches 0.5
    assert keep(0.6) == [True, True, False, False, False]
    assert keep(0.85) == [True, True, True, False, False]  # 0.85 reached exactly
    assert keep(0.86) == [True, True, True, True, False]
    assert keep(1.0) == [True] * 5
    assert keep(0.01) == [True, False, False, False, False]  # the top token always stays


def test_top_p_on_shuffled_vocabulary():
    torch.manual_seed(1)
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    perm = torch.randperm(5)
    logits = probs[perm].log()[None]
    kept = torch.isfinite(top_p_filter(logits, 0.75))[0]
    assert set(perm[kept].tolist()) == {1, 3, 4}  # 0.4 + 0.3 = 0.7 < 0.75, so 0.15 is needed


def test_temperature_zero_equals_greedy():
    torch.manual_seed(0)
    logits = torch.randn(8, 100)
    params = SamplingParams(temperature=0, top_k=5, top_p=0.5)
    assert torch.equal(sample_next(logits, params), logits.argmax(-1))


def test_sampling_stays_inside_the_filtered_set_and_is_seeded():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    params = SamplingParams(temperature=1.5, top_k=3)
    allowed = logits.topk(3).indices
    draws = [sample_next(logits, params, torch.Generator().manual_seed(i)) for i in range(50)]
    for d in draws:
        assert (allowed == d[:, None]).any(-1).all()
    again = sample_next(logits, params, torch.Generator().manual_seed(7))
    assert torch.equal(again, draws[7])


def test_low_temperature_approaches_greedy_high_spreads():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    cold = sample_next(logits, SamplingParams(temperature=0.05), gen)
    hot = sample_next(logits, SamplingParams(temperature=5.0), gen)
    assert (cold == 0).float().mean() > 0.99
    assert 0.25 < (hot == 2).float().mean() < 0.4


def test_repetition_penalty_follows_ctrl():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_out_of_range_parameters_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        SamplingParams(**kwargs)
