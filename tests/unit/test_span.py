"""Span corruption: noise statistics, sentinel format (inputs + targets give back the original),
determinism of validation, padding in the loss, sentinel checks; the Unigram tokenizer with sentinels."""

import numpy as np
import pytest
import torch

from lmforge.data.shards import TokenData
from lmforge.errors import UserError
from lmforge.models.t5 import T5, T5Config
from lmforge.tokenizer import Tokenizer, train_unigram
from lmforge.train.loop import TrainConfig
from lmforge.train.span import (
    SpanCorruption,
    build_span_objective,
    noise_counts,
    random_spans_noise_mask,
    sentinel_ids,
    seq2seq_loss,
    span_corrupt,
)

SENTINELS = list(range(200, 240))  # <extra_id_k> = 200 + k in these tests
EOS = 1


def spans_of(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D boolean mask."""
    lengths, run = [], 0
    for value in mask.tolist() + [False]:
        if value:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths


def test_noise_density_and_mean_span_length():
    masks = random_spans_noise_mask(500, 128, 0.15, 3.0, torch.Generator().manual_seed(0))
    assert masks.float().mean().item() == pytest.approx(0.15, abs=0.01)
    lengths = [n for row in masks for n in spans_of(row)]
    assert np.mean(lengths) == pytest.approx(3.0, abs=0.2)
    assert len(set(lengths)) > 3  # span lengths vary around the mean
    assert noise_counts(128, 0.15, 3.0) == (19, 6)
    assert all(len(spans_of(row)) == 6 and int(row.sum()) == 19 for row in masks)
    # the reference's layout: non-noise first, noise last, every inner position sometimes noise
    assert not masks[:, 0].any() and masks[:, -1].all()
    assert masks[:, 1:].any(dim=0).all()


def test_sentinel_format_on_an_example():
    tokens = torch.arange(10, 20)[None]  # 10 11 ... 19
    noise = torch.tensor([[0, 0, 1, 1, 0, 0, 0, 1, 0, 1]], dtype=torch.bool)
    inputs, targets = span_corrupt(tokens, noise, torch.tensor(SENTINELS), EOS)
    assert inputs.tolist() == [[10, 11, 200, 14, 15, 16, 201, 18, 202, EOS]]
    assert targets.tolist() == [[200, 12, 13, 201, 17, 202, 19, EOS]]


def reconstruct(inputs: list[int], targets: list[int]) -> list[int]:
    """Put each sentinel's span from the targets back into the inputs."""
    spans, current = {}, None
    for t in targets[:-1]:
        if t in SENTINELS:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    out = []
    for t in inputs[:-1]:
        out += spans[t] if t in SENTINELS else [t]
    return out


def test_inputs_and_targets_reconstruct_the_original():
    tokens = torch.randint(2, 200, (64, 50), generator=torch.Generator().manual_seed(1))
    objective = SpanCorruption(SENTINELS, EOS)
    inputs, targets = objective.corrupt(tokens, torch.Generator().manual_seed(2))
    num_noise, num_spans = noise_counts(50, 0.15, 3.0)
    assert inputs.shape == (64, 50 - num_noise + num_spans + 1)
    assert targets.shape == (64, num_noise + num_spans + 1)
    assert (inputs[:, -1] == EOS).all() and (targets[:, -1] == EOS).all()
    for i in range(64):
        row_inputs, row_targets = inputs[i].tolist(), targets[i].tolist()
        used = [t for t in row_inputs if t in SENTINELS]
        assert used == SENTINELS[:num_spans]  # <extra_id_0>, <extra_id_1>, ... in order
        assert [t for t in row_targets if t in SENTINELS] == used
        assert reconstruct(row_inputs, row_targets) == tokens[i].tolist()


def tiny_t5() -> T5:
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=240,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=48,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )
    return T5(cfg)


def test_validation_is_deterministic_and_training_follows_the_global_rng():
    model, objective = tiny_t5(), SpanCorruption(SENTINELS, EOS)
    x = torch.randint(2, 200, (4, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()
        assert objective(model, (x, x)).item() == objective(model, (x, x)).item()
        model.train()
        torch.manual_seed(5)
        first = objective(model, (x, x)).item()
        second = objective(model, (x, x)).item()
        torch.manual_seed(5)
        again = objective(model, (x, x)).item()
    assert first == again and first != second


def test_loss_ignores_padding():
    model = tiny_t5().eval()
    g = torch.Generator().manual_seed(0)
    short_in, long_in = (
        torch.randint(2, 200, (1, 5), generator=g),
        torch.randint(2, 200, (1, 8), generator=g),
    )
    short_out, long_out = (
        torch.randint(2, 200, (1, 3), generator=g),
        torch.randint(2, 200, (1, 6), generator=g),
    )
    inputs = torch.zeros(2, 8, dtype=torch.long)
    inputs[0, :5], inputs[1] = short_in[0], long_in[0]
    mask = inputs != 0
    labels = torch.full((2, 6), -100)
    labels[0, :3], labels[1] = short_out[0], long_out[0]
    with torch.no_grad():
        padded = seq2seq_loss(model, inputs, labels, mask)
        alone = [seq2seq_loss(model, short_in, short_out), seq2seq_loss(model, long_in, long_out)]
    expected = (3 * alone[0] + 6 * alone[1]) / 9  # mean over the 9 real target tokens
    torch.testing.assert_close(padded, expected, atol=1e-5, rtol=1e-5)


def test_objective_trains_a_tiny_t5():
    model, objective = tiny_t5(), SpanCorruption(SENTINELS, EOS)
    x = torch.randint(2, 30, (8, 32), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = objective(model, (x, x))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.fixture(scope="module")
def unigram():
    words = "the king and queen of the realm spoke to their people about war and peace".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 8)) + ".\n" for _ in range(300)]
    return train_unigram(texts, vocab_size=140, num_sentinels=20, show_progress=False)


def test_unigram_tokenizer_specials_sentinels_and_round_trip(unigram, tmp_path):
    assert unigram.kind == "unigram"
    assert [unigram.id_to_token(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert unigram.eos_id == 1 and unigram.document_separator_id == 1
    ids = sentinel_ids(unigram)
    assert len(ids) == 20 and ids[0] == unigram.vocab_size - 1  # T5's layout: <extra_id_0> last
    assert ids == sorted(ids, reverse=True)
    text = "the queen spoke.\nThe  king <extra_id_3> war"
    encoded = unigram.encode(text)
    assert ids[3] in encoded and unigram.decode(encoded) == text.replace("T", "<unk>", 1)
    unigram.save(tmp_path)
    loaded = Tokenizer.from_file(tmp_path)
    assert loaded.eos_id == 1 and sentinel_ids(loaded) == ids and loaded.encode(text) == encoded


def test_builder_reads_sentinels_and_refuses_bad_setups(unigram):
    cfg = T5Config(vocab_size=140)
    objective = build_span_objective(unigram, cfg, TrainConfig(block_size=64))
    assert objective.sentinels.tolist() == sentinel_ids(unigram) and objective.eos_id == 1
    with pytest.raises(UserError, match="20 sentinels"):
        build_span_objective(unigram, cfg, TrainConfig(block_size=512))
    from lmforge.tokenizer import train_char

    with pytest.raises(UserError, match="no.*sentinel|sentinel tokens"):
        build_span_objective(train_char("abc"), cfg, TrainConfig())


def test_sentinel_collision_in_the_data_is_refused():
    objective = SpanCorruption(SENTINELS, EOS)
    clean = TokenData.from_arrays(np.arange(2, 100), np.arange(2, 50), 240)
    objective.check_data(clean)
    dirty = TokenData.from_arrays(np.arange(2, 100), np.array([5, 6, 203, 7]), 240)
    with pytest.raises(UserError, match=r"sentinel collision: the val data contains <extra_id_3>"):
        objective.check_data(dirty)
