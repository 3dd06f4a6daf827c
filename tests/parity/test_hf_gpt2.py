"""GPT-2 parity with `transformers` (fp32, atol 1e-4) through the production converters:
state dicts of a random GPT2LMHeadModel, its `save_pretrained` directory read by our `load_hf`, and
our random models (biases or none, tied or not, exact or tanh GELU) written by `save_hf` and read by
`AutoModelForCausalLM.from_pretrained`."""

import pytest
import torch

from lmforge.interop.hf_gpt2 import config_from_hf, state_from_hf
from lmforge.models import GPT
from lmforge.models.loading import load_model_state

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf


@pytest.mark.parametrize(
    "shape",
    [
        dict(n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=101),
        dict(n_embd=96, n_layer=3, n_head=3, n_positions=64, vocab_size=257, n_inner=200),
    ],
)
def test_logits_match_gpt2lmheadmodel(shape):
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        **shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    cfg = config_from_hf(hf_cfg.to_dict())
    ours = GPT(cfg).eval()
    load_model_state(ours, state_from_hf(hf.state_dict(), cfg), "hf")
    x = torch.randint(0, shape["vocab_size"], (3, shape["n_positions"] - 1))
    with torch.no_grad():
        expected = hf(input_ids=x).logits
        got = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- directories, both directions
@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights (biases and LayerNorms included) large enough that the logits are O(1)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        base = 1.0 if ("ln" in name or "norm" in name) and name.endswith("weight") else 0.0
        p.copy_(base + 0.15 * torch.randn(p.shape, generator=g))


HF_SHAPES = {
    "tied": dict(n_embd=64, n_layer=2, n_head=4),
    "n_inner-untied": dict(n_embd=48, n_layer=2, n_head=3, n_inner=80, tie_word_embeddings=False),
    "exact-gelu": dict(n_embd=32, n_layer=1, n_head=2, activation_function="gelu"),
}
OUR_SHAPES = {  # lmforge GPTConfig fields
    "gpt2-style": dict(hidden_size=64, num_heads=4, mlp="gelu_tanh", bias=True),
    "no-bias-gelu": dict(hidden_size=64, num_heads=4, mlp="gelu", bias=False),  # gpt2-tiny
    "intermediate-untied": dict(
        hidden_size=48, num_heads=3, intermediate_size=80, tie_embeddings=False
    ),
}


@pytest.mark.parametrize("shape", list(HF_SHAPES))
def test_transformers_save_pretrained_loads_into_lmforge(shape, tmp_path):
    from lmforge.interop.hf import load_hf

    cfg = transformers.GPT2Config(
        vocab_size=101, n_positions=40, bos_token_id=None, eos_token_id=None, **HF_SHAPES[shape]
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    randomize(hf)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours, _ = load_hf(tmp_path)
    x = torch.randint(0, 101, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = hf(input_ids=x).logits, ours(x)
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", list(OUR_SHAPES))
def test_lmforge_export_loads_into_transformers(shape, tmp_path):
    from lmforge.interop.hf import save_hf
    from lmforge.models import GPTConfig

    ours = GPT(GPTConfig(vocab_size=101, num_layers=2, max_seq_len=40, **OUR_SHAPES[shape]))
    randomize(ours.eval())
    save_hf(ours, None, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    x = torch.randint(0, 101, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ours(x), hf(input_ids=x).logits
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
