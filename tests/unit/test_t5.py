"""T5: relative position buckets against the reference formula, shapes, padding, KV-cached decoding,
save/load round trips, config and registry."""

import math

import pytest
import torch

from lmforge.errors import UserError
from lmforge.models import registry
from lmforge.models.loading import load_model, save_model
from lmforge.models.t5 import T5, T5Config
from lmforge.nn import RelativePositionBias, relative_position_bucket


def mesh_tf_bucket(
    relative_position: int, bidirectional: bool, num_buckets: int, max_distance: int
):
    """Mesh TensorFlow's `_relative_position_bucket`, one integer at a time (n = query - key)."""
    ret, n = 0, -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (16, 32), (64, 256)])
def test_relative_position_buckets_match_the_reference(bidirectional, num_buckets, max_distance):
    relative = torch.arange(-300, 301)
    got = relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    expected = [
        mesh_tf_bucket(r, bidirectional, num_buckets, max_distance) for r in range(-300, 301)
    ]
    assert got.tolist() == expected
    assert got.min() >= 0 and got.max() < num_buckets


def test_relative_bias_shape_and_direction():
    bias = RelativePositionBias(8, 16, num_heads=3, bidirectional=False)
    torch.nn.init.normal_(bias.weight)
    values = bias(4, 6, offset=2)  # queries at 2..5 over keys 0..5
    assert values.shape == (1, 3, 4, 6)
    # a decoder's future keys all share bucket 0, like distance 0
    torch.testing.assert_close(values[0, :, 0, 3], values[0, :, 0, 2])


def tiny_t5(seed: int = 0, **overrides) -> T5:
    torch.manual_seed(seed)
    shape = dict(
        vocab_size=61,
        hidden_size=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        intermediate_size=64,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        max_seq_len=64,
    )
    return T5(T5Config(**{**shape, **overrides})).eval()


def batch(vocab: int = 61):
    g = torch.Generator().manual_seed(3)
    source = torch.randint(2, vocab, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False  # padded rows
    mask[2, 4:] = False
    target = torch.randint(2, vocab, (3, 9), generator=g)
    return source, mask, target


@pytest.mark.parametrize("variant", [dict(), dict(mlp="gated-gelu", tie_embeddings=False)])
def test_forward_shape_and_padded_rows_equal_rows_alone(variant):
    model = tiny_t5(**variant)
    source, mask, target = batch()
    with torch.no_grad():
        logits = model(source, mask, target)
        assert logits.shape == (3, 9, 61)
        for row in (1, 2):
            n = int(mask[row].sum())
            alone = model(source[row : row + 1, :n], None, target[row : row + 1])
            torch.testing.assert_close(logits[row : row + 1], alone, atol=1e-5, rtol=1e-5)


def test_decoder_is_causal():
    model = tiny_t5()
    source, mask, target = batch()
    changed = target.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 61
    with torch.no_grad():
        a, b = model(source, mask, target), model(source, mask, changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("variant", [dict(), dict(mlp="gated-gelu", tie_embeddings=False)])
def test_cached_decoding_equals_the_full_forward(variant):
    model = tiny_t5(**variant)
    source, mask, target = batch()
    with torch.no_grad():
        full = model(source, mask, target)
        state = model.start_decoding(source, mask, max_len=9)
        parts = [model.decode(chunk, state) for chunk in target.split([3, 1, 1, 2, 1, 1], dim=1)]
    assert state.cache.length == 9
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_decoder_state_reorder_follows_the_rows():
    model = tiny_t5()
    source, mask, target = batch()
    index = torch.tensor([2, 0, 0])
    with torch.no_grad():
        state = model.start_decoding(source, mask, max_len=9)
        model.decode(target[:, :4], state)
        state.reorder(index)
        step = model.decode(target[index, 4:5], state)
        full = model(source[index], mask[index], target[index, :5])
    torch.testing.assert_close(step[:, 0], full[:, 4], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_save_and_load_round_trip(tmp_path, tie):
    model = tiny_t5(tie_embeddings=tie, mlp="relu" if tie else "gated-gelu")
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert isinstance(loaded, T5) and loaded.config == model.config
    assert (loaded.lm_head.weight is loaded.shared.weight) == tie
    source, mask, target = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(source, mask, target), model(source, mask, target))


def test_config_dict_round_trip_and_validation():
    cfg = T5Config.from_preset("t5-tiny", vocab_size=300)
    data = cfg.to_dict()
    assert data["family"] == "t5" and T5Config.from_dict(data) == cfg
    assert registry.config_from_dict(data) == cfg
    assert registry.family_of(cfg).name == "t5" and registry.family_of(T5(cfg)).name == "t5"
    with pytest.raises(ValueError, match="unknown model config keys: bogus"):
        T5Config.from_dict({**data, "bogus": 1})
    with pytest.raises(ValueError, match="mlp"):
        T5Config(mlp="swiglu")
    with pytest.raises(ValueError, match="divisible"):
        T5Config(hidden_size=30, num_heads=4)
    with pytest.raises(UserError, match="bad model config"):
        registry.get_preset("t5-tiny", num_heads=0)


def test_presets_and_accounting():
    with torch.device("meta"):
        small = T5(registry.get_preset("t5-small"))
    assert 60.4e6 < small.num_params() < 60.6e6  # the 60M T5-small (tied embeddings)
    tiny = tiny_t5()
    assert tiny.num_params(non_embedding=True) < tiny.num_params()
    assert tiny.flops_per_token(32) > 6 * tiny.num_params(non_embedding=True)
    assert tiny.tied_parameter_names() == {"lm_head.weight"}
    assert tiny_t5(tie_embeddings=False).tied_parameter_names() == set()


def test_shift_right_starts_with_the_decoder_start_token():
    model = tiny_t5()
    labels = torch.tensor([[5, 6, 7], [8, -100, -100]])
    assert model.shift_right(labels).tolist() == [[0, 5, 6], [0, 8, 0]]
