"""BERT parity with `transformers` (fp32, eval, atol 1e-4) through the production converters, both
ways: a random `BertForMaskedLM` (state dict and `save_pretrained` directory) read by lmforge, and
random lmforge models written by `save_hf` and read by `BertForMaskedLM.from_pretrained`; with
padding masks and token types."""

import pytest
import torch

from lmforge.interop.hf import load_hf, save_hf
from lmforge.interop.hf_bert import config_from_hf, state_from_hf
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.loading import load_model_state
from lmforge.tokenizer import train_wordpiece

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

HF_SHAPES = {
    "tied": dict(
        vocab_size=101,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
    ),
    "untied-3types-tanh": dict(
        vocab_size=257,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=80,
        max_position_embeddings=40,
        type_vocab_size=3,
        tie_word_embeddings=False,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-5,
    ),
}
OUR_SHAPES = {  # lmforge BertConfig fields
    "tied": dict(hidden_size=64, num_heads=4, intermediate_size=128),
    "untied-tanh": dict(
        hidden_size=48, num_heads=2, intermediate_size=96, tie_embeddings=False, type_vocab_size=3
    ),
}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights (biases and LayerNorms included) large enough that the logits are O(1)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        is_gain = ("LayerNorm" in name or "norm" in name) and name.endswith("weight")
        p.copy_(float(is_gain) + 0.15 * torch.randn(p.shape, generator=g))


def inputs(vocab_size: int, type_vocab_size: int, length: int):
    """Three sequences of `length` positions, the last two padded at the end, mixed token types."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab_size, (3, length), generator=g)
    types = torch.randint(0, type_vocab_size, (3, length), generator=g)
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, length - 5 :] = 0
    mask[2, length // 2 :] = 0
    return ids, types, mask


def hf_model(shape: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        **shape, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )
    model = transformers.BertForMaskedLM(cfg)
    randomize(model)
    return model.eval()


def assert_same_logits(ours: Bert, hf: torch.nn.Module, cfg: BertConfig) -> None:
    ids, types, mask = inputs(cfg.vocab_size, cfg.type_vocab_size, cfg.max_seq_len - 1)
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        got = ours.eval()(ids, types, mask)
    real = mask.bool()  # padded positions' outputs are meaningless (and differ in no model)
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero logits


@pytest.mark.parametrize("shape", HF_SHAPES.values(), ids=HF_SHAPES.keys())
def test_logits_match_bertformaskedlm(shape):
    hf = hf_model(shape)
    cfg = config_from_hf(hf.config.to_dict())
    ours = Bert(cfg)
    load_model_state(ours, state_from_hf(hf.state_dict(), cfg), "hf")
    assert_same_logits(ours, hf, cfg)


@pytest.mark.parametrize("shape", HF_SHAPES.values(), ids=HF_SHAPES.keys())
def test_save_pretrained_directory_loads_as_our_bert(tmp_path, shape):
    hf = hf_model(shape)
    hf.save_pretrained(tmp_path)
    ours, tokenizer = load_hf(tmp_path)
    assert isinstance(ours, Bert) and tokenizer is None
    assert_same_logits(ours, hf, ours.config)


@pytest.mark.parametrize("shape", OUR_SHAPES.values(), ids=OUR_SHAPES.keys())
def test_our_export_loads_in_transformers(tmp_path, shape):
    torch.manual_seed(0)
    activation = "gelu_tanh" if "tanh" in str(shape) else "gelu"
    cfg = BertConfig(vocab_size=120, num_layers=2, max_seq_len=24, activation=activation, **shape)
    ours = Bert(cfg)
    randomize(ours)
    save_hf(ours, None, tmp_path)
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    assert_same_logits(ours, hf, cfg)


def test_exported_tokenizer_loads_in_transformers(tmp_path):
    text = "the king and the queen spoke to their people about war and peace.\n" * 20
    tokenizer = train_wordpiece([text], vocab_size=80, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    model = Bert(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            intermediate_size=64,
            max_seq_len=16,
        )
    )
    save_hf(model, tokenizer, tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok.mask_token == "[MASK]" and hf_tok.mask_token_id == 4
    encoded = hf_tok("the king [MASK] peace")["input_ids"]
    assert encoded == [2, *tokenizer.encode("the king [MASK] peace"), 3]  # [CLS] ... [SEP]


def test_pre_norm_is_refused_on_export(tmp_path):
    from lmforge.errors import UserError

    cfg = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_seq_len=16,
        pre_norm=True,
    )
    with pytest.raises(UserError, match="post-LN"):
        save_hf(Bert(cfg), None, tmp_path)
