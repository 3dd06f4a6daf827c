"""Sliding-window perplexity against direct computations on tiny models."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_gpt

from lmforge.errors import UserError
from lmforge.eval import perplexity, sliding_windows
from lmforge.models import GPT
from lmforge.tokenizer import train_char

TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune — or to take arms against a sea of troubles. "
    "Ay, there's the rub; café.\n"
)
CONTEXT = 16


@pytest.fixture(scope="module")
def tokenizer():
    return train_char(TEXT)


def tiny_model(preset: str, vocab_size: int, seed: int = 0) -> GPT:
    return tiny_gpt(preset, vocab_size, seed, max_seq_len=32).eval()


@pytest.fixture(scope="module", params=["llama-tiny", "gpt2-tiny"])
def model(request, tokenizer):
    return tiny_model(request.param, tokenizer.vocab_size)


def nll_sum(model, ids: list[int]) -> float:
    """Summed NLL of ids[1:] given the preceding ids, in one full forward pass."""
    x = torch.tensor(ids)[None]  # (1, T)
    with torch.no_grad():
        logits = model(x)[0, :-1]  # (T - 1, V)
    return F.cross_entropy(logits.double(), x[0, 1:], reduction="sum").item()


def hf_reference(model, ids: list[int], context: int, stride: int) -> tuple[float, int]:
    """The loop of Hugging Face's "Perplexity of fixed-length models" guide (labels -100)."""
    seq = torch.tensor(ids)[None]  # (1, L)
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, seq.size(1), stride):
        end = min(begin + context, seq.size(1))
        trg_len = end - prev_end
        x = seq[:, begin:end]
        labels = x.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            logits = model(x)[0, :-1]  # (T - 1, V)
        y = labels[0, 1:]
        total += F.cross_entropy(logits.double(), y, ignore_index=-100, reduction="sum").item()
        count += int((y != -100).sum())
        prev_end = end
        if end == seq.size(1):
            break
    return total, count


def brute_force(model, ids: list[int], context: int) -> tuple[float, int]:
    """Each token scored on its own, after the longest context a window of `context` allows."""
    total = 0.0
    for t in range(1, len(ids)):
        window = ids[max(0, t - context + 1) : t + 1]
        x = torch.tensor(window)[None]  # (1, T)
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0, -2].double(), dim=-1)  # (V,)
        total -= logp[window[-1]].item()
    return total, len(ids) - 1


@pytest.mark.parametrize(
    "length,context,stride", [(50, 16, 8), (50, 16, 16), (50, 16, 1), (7, 16, 5)]
)
def test_windows_score_each_position_once(length, context, stride):
    scored = []
    for begin, end, first in sliding_windows(length, context, stride):
        assert end - begin <= context and begin < first < end
        scored.extend(range(first, end))
    assert scored == sorted(set(scored))
    if stride < context:
        assert scored == list(range(1, length))
    else:  # disjoint windows: each window's first token is context only
        assert scored == [p for p in range(1, length) if p % context]


def test_disjoint_windows_equal_direct_cross_entropy(model, tokenizer):
    ids = tokenizer.encode(TEXT)
    chunks = [ids[i : i + CONTEXT] for i in range(0, len(ids), CONTEXT)]
    chunks = [c for c in chunks if len(c) > 1]
    expected = sum(nll_sum(model, c) for c in chunks)
    count = sum(len(c) - 1 for c in chunks)
    r = perplexity(
        model, tokenizer, TEXT, context=CONTEXT, stride=CONTEXT, eos_prefix=False, progress=False
    )
    assert r.tokens == count
    assert r.nll_sum == pytest.approx(expected, rel=1e-5)
    assert r.mean_nll == pytest.approx(expected / count, rel=1e-5)
    assert r.perplexity == pytest.approx(math.exp(expected / count), rel=1e-5)


def test_short_text_equals_single_pass(model, tokenizer):
    text = TEXT[:12]
    ids = tokenizer.encode(text)
    assert len(ids) < CONTEXT
    r = perplexity(model, tokenizer, text, context=CONTEXT, stride=4, progress=False)
    prefixed = [tokenizer.eos_id, *ids]
    assert r.tokens == len(ids)
    assert r.nll_sum == pytest.approx(nll_sum(model, prefixed), rel=1e-5)


@pytest.mark.parametrize("stride", [1, 3, 8, 16])
def test_matches_hugging_face_loop(model, tokenizer, stride):
    ids = tokenizer.encode(TEXT[:90])
    expected, count = hf_reference(model, ids, CONTEXT, stride)
    r = perplexity(
        model, tokenizer, ids, context=CONTEXT, stride=stride, eos_prefix=False, progress=False
    )
    assert r.tokens == count
    assert r.nll_sum == pytest.approx(expected, rel=1e-5)


def test_stride_one_equals_per_token_loop(tokenizer):
    model = tiny_model("llama-tiny", tokenizer.vocab_size, seed=1)
    ids = tokenizer.encode(TEXT[:40])
    expected, count = brute_force(model, ids, context=8)
    r = perplexity(model, tokenizer, ids, context=8, stride=1, eos_prefix=False, progress=False)
    assert r.tokens == count
    assert r.nll_sum == pytest.approx(expected, rel=1e-5)


def test_bits_per_byte_counts_utf8_bytes(model, tokenizer):
    r = perplexity(model, tokenizer, TEXT, context=CONTEXT, progress=False)
    n_bytes = len(TEXT.encode("utf-8"))
    assert n_bytes > len(TEXT)  # "—" and "é" are several bytes
    assert r.bytes == n_bytes and r.tokens == len(TEXT)  # char tokens, all scored after the prefix
    assert r.bits_per_byte == pytest.approx(r.nll_sum / (math.log(2) * n_bytes), rel=1e-12)
    assert r.bits_per_token == pytest.approx(r.mean_nll / math.log(2), rel=1e-12)
    assert r.perplexity == pytest.approx(math.exp(r.mean_nll), rel=1e-12)
    # Without the prefix the first character is context only, and so are its bytes.
    r = perplexity(model, tokenizer, TEXT, context=CONTEXT, eos_prefix=False, progress=False)
    assert (r.tokens, r.bytes) == (len(TEXT) - 1, n_bytes - 1)


def test_eos_prefix_is_a_prepended_token(model, tokenizer):
    ids = tokenizer.encode(TEXT)
    a = perplexity(model, tokenizer, ids, context=CONTEXT, progress=False)
    b = perplexity(
        model,
        tokenizer,
        [tokenizer.eos_id, *ids],
        context=CONTEXT,
        eos_prefix=False,
        progress=False,
    )
    assert a.tokens == b.tokens == len(ids)
    assert a.nll_sum == pytest.approx(b.nll_sum, rel=1e-6)


def test_batching_and_documents(model, tokenizer):
    docs = [TEXT, TEXT[:30], TEXT[50:]]
    results = [
        perplexity(model, tokenizer, docs, context=CONTEXT, stride=6, batch_size=b, progress=False)
        for b in (1, 3, None)
    ]
    for r in results[1:]:
        assert r.tokens == results[0].tokens
        assert r.nll_sum == pytest.approx(results[0].nll_sum, rel=1e-5)
    alone = [
        perplexity(model, tokenizer, d, context=CONTEXT, stride=6, progress=False) for d in docs
    ]
    assert results[0].documents == 3
    assert results[0].tokens == sum(r.tokens for r in alone)
    assert results[0].bytes == sum(r.bytes for r in alone)
    assert results[0].nll_sum == pytest.approx(sum(r.nll_sum for r in alone), rel=1e-5)


def test_defaults_and_training_flag(tokenizer):
    model = tiny_model("llama-tiny", tokenizer.vocab_size).train()
    r = perplexity(model, tokenizer, TEXT, progress=False)
    assert (r.context, r.stride) == (32, 16)
    assert model.training
    assert r.to_dict()["tokens_per_second"] > 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(stride=0), "stride"),
        (dict(stride=CONTEXT + 1), "stride"),
        (dict(context=64), "max_seq_len"),
        (dict(batch_size=0), "batch size"),
    ],
)
def test_bad_options(model, tokenizer, kwargs, match):
    with pytest.raises(UserError, match=match):
        perplexity(model, tokenizer, TEXT, **{"context": CONTEXT, **kwargs}, progress=False)


def test_bad_documents(model, tokenizer):
    with pytest.raises(UserError, match="at least 2"):
        perplexity(model, tokenizer, [TEXT, "T"], progress=False)
    with pytest.raises(UserError, match="no text"):
        perplexity(model, tokenizer, [], progress=False)
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        perplexity(model, tokenizer, [1, 2, 10_000], progress=False)
