"""NF4 (peft/nf4.py): the levels, the error bound, double quantization and the frozen layer."""

import pytest
import torch
from torch import nn

from lmforge.peft.nf4 import (
    BLOCK,
    MAX_GAP,
    NF4_LEVELS,
    NF4Linear,
    block_scales,
    dequantize_nf4,
    quantize_linears,
    quantize_nf4,
)


def test_the_levels_are_normal_quantiles_with_an_exact_zero():
    assert len(NF4_LEVELS) == 16 and NF4_LEVELS[0] == -1 and NF4_LEVELS[-1] == 1
    assert 0.0 in NF4_LEVELS.tolist() and torch.all(NF4_LEVELS[1:] > NF4_LEVELS[:-1])
    assert pytest.approx(1 - 0.6961928009986877) == MAX_GAP  # between -1 and the next level
    normal = torch.distributions.Normal(0.0, 1.0)  # positive half: quantiles of N(0, 1) / q_max
    q = normal.icdf(torch.linspace(0.5, 0.9677, 9))
    torch.testing.assert_close(NF4_LEVELS[7:], q / q[-1], atol=2e-3, rtol=0)


@pytest.mark.parametrize("double_quant", [False, True])
def test_quantization_error_is_within_the_known_bound(double_quant):
    torch.manual_seed(0)
    w = torch.randn(96, 256) * 0.02
    w[3, 5] = 0.5  # an outlier only widens its own block
    state = quantize_nf4(w, double_quant)
    w_hat = dequantize_nf4(state)
    blocks = w.reshape(-1, BLOCK)
    absmax = blocks.abs().amax(dim=1)
    scale_error = (block_scales(state) - absmax).abs()
    bound = absmax * MAX_GAP / 2 + scale_error + 1e-7  # per block
    assert torch.all((w_hat - w).reshape(-1, BLOCK).abs() <= bound[:, None])
    if not double_quant:
        assert torch.all(scale_error == 0)
    else:
        assert scale_error.max() <= absmax.max() / 127  # half a step of at most 2 * max / 254
    relative = (w_hat - w).norm() / w.norm()
    assert relative < 0.12  # NF4 of normal weights: ~10% in the 2-norm
    assert torch.equal(dequantize_nf4(quantize_nf4(w_hat, False)), w_hat)  # levels are fixed points


def test_nf4_linear_is_frozen_small_and_close():
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    q = NF4Linear(linear)
    assert not any(p.requires_grad for p in q.parameters())
    assert q.storage_bytes() < 0.55 * linear.weight.numel()  # against 4 bytes each in fp32
    x = torch.randn(5, 256)
    y, y_hat = linear(x), q(x)
    assert ((y_hat - y).norm() / (y - linear.bias).norm()) < 0.15
    plain = q.to_linear()
    torch.testing.assert_close(plain(x), y_hat)


def test_quantize_linears_skips_the_lm_head_and_odd_shapes():
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(64, 64))
    model.add_module("odd", nn.Linear(3, 5))
    model.add_module("lm_head", nn.Linear(64, 64))
    assert quantize_linears(model) == ["proj"]
    assert isinstance(model.proj, NF4Linear) and type(model.lm_head) is nn.Linear


def test_lora_over_nf4_is_qlora():
    """A fresh adapter leaves the quantized model's outputs unchanged, only the adapters train,
    and merging gives dense layers with the same outputs."""
    from helpers import tiny_gpt

    from lmforge.peft.lora import apply_lora, lora_layers, merge_lora

    model = tiny_gpt("llama-tiny", 61, seed=0)
    ids = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(0))
    model.requires_grad_(False)
    assert len(quantize_linears(model)) == 7 * model.config.num_layers
    quantized = model(ids)
    apply_lora(model, ["q_proj", "v_proj"], rank=2, alpha=4)
    torch.testing.assert_close(model(ids), quantized, atol=0, rtol=0)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(std=0.05)
    model(ids).logsumexp(-1).mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_" in n for n in with_grad)
    adapted = model(ids).detach()
    merge_lora(model)
    assert type(model.layers[0].attn.q_proj) is nn.Linear
    assert isinstance(model.layers[0].attn.k_proj, NF4Linear)  # not adapted: still 4-bit
    torch.testing.assert_close(model(ids), adapted, atol=1e-5, rtol=1e-5)
