"""The BERT model: config, shapes, padding, post-/pre-LN, parameter count, save/load round trip."""

import pytest
import torch

from lmforge.errors import UserError
from lmforge.models import registry
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.loading import WEIGHTS_FILE, load_model, load_safetensors, save_model

TINY = dict(
    vocab_size=97,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_seq_len=24,
    dropout=0.0,
)


def tiny_bert(seed: int = 0, **overrides) -> Bert:
    torch.manual_seed(seed)
    return Bert(BertConfig(**{**TINY, **overrides})).eval()


def test_config_validation_and_dict_round_trip():
    cfg = BertConfig(**TINY)
    data = cfg.to_dict()
    assert data["family"] == "bert" and BertConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match="unknown model config keys: num_kv_heads"):
        BertConfig.from_dict({**data, "num_kv_heads": 2})
    for bad in (
        dict(hidden_size=30),  # not divisible by 4 heads
        dict(activation="relu"),
        dict(dropout=1.0),
        dict(type_vocab_size=0),
    ):
        with pytest.raises(ValueError):
            BertConfig(**{**TINY, **bad})


def test_presets_and_registry():
    cfg = BertConfig.from_preset("bert-tiny", num_layers=2)
    assert cfg.num_layers == 2 and cfg.hidden_size == 128 and not cfg.pre_norm
    family = registry.get_family("bert")
    assert family.model_class is Bert and family.objectives == ("mlm",)
    assert registry.family_for_objective("mlm") is family
    assert registry.family_of(cfg) is family
    with pytest.raises(UserError, match="bad model config"):
        BertConfig.from_preset("bert-tiny", activation="relu")


def test_bert_base_has_110m_parameters():
    with torch.device("meta"):
        model = Bert(BertConfig.from_preset("bert-base"))
    V, C, L, F, P = 30522, 768, 12, 3072, 512  # vocab, width, layers, MLP width, positions
    embeddings = (V + P + 2) * C + 2 * C
    layer = 4 * (C * C + C) + (C * F + F) + (F * C + C) + 2 * 2 * C
    pooler = C * C + C
    head = C * C + C + 2 * C + V  # transform, its LayerNorm, decoder bias (weight tied)
    assert model.num_params() == embeddings + L * layer + pooler + head == 110_104_890
    assert model.num_params(non_embedding=True) == model.num_params() - (V + P + 2) * C
    assert model.flops_per_token(128) == 6 * (model.num_params(True) + V * C) + 12 * L * C * 128


@pytest.mark.parametrize("pre_norm", [False, True])
def test_shapes_and_selected_positions(pre_norm):
    model = tiny_bert(pre_norm=pre_norm)
    assert (model.norm is not None) == pre_norm
    x = torch.randint(0, 97, (3, 10))
    with torch.no_grad():
        logits = model(x)
        hidden = model(x, return_hidden=True)
        select = torch.rand(3, 10) < 0.3
        picked = model(x, select=select)
    assert logits.shape == (3, 10, 97) and hidden.shape == (3, 10, 32)
    torch.testing.assert_close(picked, logits[select])
    assert model.pooler(hidden).shape == (3, 32)
    with pytest.raises(ValueError, match="exceeds the 24 positions"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_token_types_change_the_output():
    model = tiny_bert()
    x = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        default = model(x)
        zeros = model(x, token_type_ids=torch.zeros_like(x))
        ones = model(x, token_type_ids=torch.ones_like(x))
    torch.testing.assert_close(default, zeros)
    assert not torch.allclose(zeros, ones)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_padding_mask_makes_padded_positions_irrelevant(pre_norm):
    model = tiny_bert(pre_norm=pre_norm)
    short = torch.randint(0, 97, (1, 7))
    alone = model(short)[0]  # (7, V)
    padded = torch.randint(0, 97, (2, 12))  # two different pads after the same 7 tokens
    padded[:, :7] = short
    mask = torch.zeros(2, 12, dtype=torch.long)
    mask[:, :7] = 1
    with torch.no_grad():
        out = model(padded, attention_mask=mask)
    torch.testing.assert_close(out[0, :7], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :7], alone, atol=1e-5, rtol=1e-5)
    without_mask = model(padded)[0, :7]
    assert not torch.allclose(without_mask, alone, atol=1e-3)


def test_init_weights_follow_bert():
    model = tiny_bert(hidden_size=64, intermediate_size=256, vocab_size=512)
    w = model.layers[0].mlp.up_proj.weight
    assert abs(w.std().item() - 0.02) < 0.002
    assert torch.all(model.layers[0].attn.q_proj.bias == 0)
    assert torch.all(model.embed_norm.weight == 1)
    assert torch.all(model.mlm_head.decoder.bias == 0)


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip(tmp_path, tie):
    model = tiny_bert(tie_embeddings=tie)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_model(model, tmp_path)
    saved = load_safetensors(tmp_path / WEIGHTS_FILE)
    assert ("mlm_head.decoder.weight" in saved) == (not tie)
    back = load_model(tmp_path)
    assert isinstance(back, Bert) and back.config == model.config
    assert (back.mlm_head.decoder.weight is back.embed_tokens.weight) == tie
    x = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
