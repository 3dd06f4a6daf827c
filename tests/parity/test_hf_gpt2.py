"""Our GPT-2-style model, loaded through our converter with the weights of a randomly initialised
`transformers` GPT2LMHeadModel, gives the same logits (fp32, atol 1e-4)."""

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
