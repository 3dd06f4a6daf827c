"""Shared blocks: causal masking, RoPE, GQA, KV cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.nn import Attention, KVCache, RotaryEmbedding, apply_rotary
from lmforge.nn.norms import RMSNorm


def _naive_attention(attn: Attention, x: torch.Tensor, rope=None) -> torch.Tensor:
    """Reference: explicit softmax(QK^T/sqrt(d) + causal mask) V with repeated KV heads."""
    B, T, _ = x.shape
    H, Hkv, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(B, T, H, D).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)
    if rope is not None:
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    k = k.repeat_interleave(H // Hkv, dim=1)
    v = v.repeat_interleave(H // Hkv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_matches_reference_with_gqa(kv_heads):
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, num_kv_heads=kv_heads)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), _naive_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_causal_mask_future_tokens_do_not_leak():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4)
    x = torch.randn(1, 8, 32)
    y = attn(x)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 32)  # change the future
    y2 = attn(x2)
    torch.testing.assert_close(y[:, :5], y2[:, :5])
    assert not torch.allclose(y[:, 5:], y2[:, 5:])


def test_bidirectional_attention_sees_the_future():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4)
    x = torch.randn(1, 8, 32)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(attn(x, causal=False)[:, 0], attn(x2, causal=False)[:, 0])


def test_rope_rotation_preserves_norm_and_is_relative():
    rope = RotaryEmbedding(head_dim=16, max_len=64, theta=10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def rotated(x, pos):
        cos, sin = rope(torch.tensor([pos]))
        return apply_rotary(x, cos, sin)

    assert torch.allclose(rotated(q, 9).norm(), q.norm(), atol=1e-5)
    # <R_m q, R_n k> depends only on m - n (RoFormer, eq. 16)
    a = (rotated(q, 3) * rotated(k, 1)).sum()
    b = (rotated(q, 12) * rotated(k, 10)).sum()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rope_matches_the_formula():
    D, theta, pos = 8, 10000.0, 5
    rope = RotaryEmbedding(D, 16, theta)
    x = torch.randn(1, 1, 1, D)
    cos, sin = rope(torch.tensor([pos]))
    y = apply_rotary(x, cos, sin)[0, 0, 0]
    x = x[0, 0, 0]
    for i in range(D // 2):
        angle = pos * theta ** (-2 * i / D)
        a, b = x[i], x[i + D // 2]
        assert y[i].item() == pytest.approx(
            (a * math.cos(angle) - b * math.sin(angle)).item(), abs=1e-5
        )
        assert y[i + D // 2].item() == pytest.approx(
            (b * math.cos(angle) + a * math.sin(angle)).item(), abs=1e-5
        )


def test_kv_cache_decoding_equals_full_attention():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, num_kv_heads=2)
    x = torch.randn(2, 9, 32)
    full = attn(x)
    cache = KVCache(1, 2, 2, 16, 8)
    parts = []
    for chunk in (x[:, :4], x[:, 4:5], x[:, 5:8], x[:, 8:9]):  # prefill, then mixed steps
        parts.append(attn(chunk, cache=cache))
        cache.advance(chunk.size(1))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_overflow_is_an_error():
    cache = KVCache(1, 1, 1, 4, 8)
    with pytest.raises(ValueError, match="overflow"):
        cache.update(0, torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 5, 8))


def test_rmsnorm_formula():
    norm = RMSNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))

    def formula(x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight

    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(norm(x), formula(x))  # with gradients: F.rms_norm
    with torch.no_grad():  # inference on a CPU: LayerNorm's kernel on [x, -x]
        torch.testing.assert_close(norm(x), formula(x))
        small = x * 1e-3  # mean(x^2) near eps: eps must enter as in the formula
        torch.testing.assert_close(norm(small), formula(small))


def test_sdpa_causal_reference_sanity():
    q = k = v = torch.randn(1, 1, 4, 8)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0])  # the first query sees only itself


def test_kv_cache_reorder_keeps_the_chosen_sequences():
    cache = KVCache(num_layers=2, batch_size=3, num_kv_heads=1, max_len=4, head_dim=2)
    k = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2)  # sequence i holds the value i
    for layer in range(2):
        cache.update(layer, k, -k)
    cache.advance(2)
    cache.reorder(torch.tensor([2, 0]))
    keys, values = cache.update(1, torch.full((2, 1, 1, 2), 9.0), torch.zeros(2, 1, 1, 2))
    assert keys.shape == (2, 1, 3, 2)
    assert keys[:, 0, :2, 0].tolist() == [[2.0, 2.0], [0.0, 0.0]]
    assert keys[:, 0, 2, 0].tolist() == [9.0, 9.0] and values[0, 0, 0, 0] == -2.0


# ---------------------------------------------------------------- cross-attention, bias, scale
def _naive_cross(attn: Attention, x, memory, bias=None, mask=None, scale=None):
    """Reference: softmax(s Q K^T + bias, masked) V with keys and values from `memory`."""
    B, T, _ = x.shape
    S, H, D = memory.size(1), attn.num_heads, attn.head_dim
    q = attn.q_proj(x).view(B, T, H, D).transpose(1, 2)
    k = attn.k_proj(memory).view(B, S, H, D).transpose(1, 2)
    v = attn.v_proj(memory).view(B, S, H, D).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) * (1 / math.sqrt(D) if scale is None else scale)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D))


def test_cross_attention_with_bias_padding_and_scale_matches_reference():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, bias=False, scale=1.0)
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    bias = torch.randn(1, 4, 5, 7)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 4:] = False  # padded keys of the second sequence
    expected = _naive_cross(attn, x, memory, bias, mask, scale=1.0)
    torch.testing.assert_close(attn(x, kv_input=memory, bias=bias, mask=mask), expected)
    kv = attn.project_kv(memory)  # projected once, reused (a decoder's cross keys/values)
    torch.testing.assert_close(attn(x, kv=kv, bias=bias, mask=mask), expected)
    torch.testing.assert_close(attn(x, kv=kv), _naive_cross(attn, x, memory, scale=1.0))


def test_self_attention_bias_combines_with_the_causal_mask_and_the_cache():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, num_kv_heads=2)
    x, bias = torch.randn(2, 6, 32), torch.randn(1, 4, 6, 6)
    full = attn(x, bias=bias)  # causal by default
    H, Hkv, D = 4, 2, 8
    q = attn.q_proj(x).view(2, 6, H, D).transpose(1, 2)
    k = attn.k_proj(x).view(2, 6, Hkv, D).transpose(1, 2).repeat_interleave(2, dim=1)
    v = attn.v_proj(x).view(2, 6, Hkv, D).transpose(1, 2).repeat_interleave(2, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D) + bias
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, H * D)
    torch.testing.assert_close(full, attn.o_proj(y), atol=1e-5, rtol=1e-5)
    cache = KVCache(1, 2, 2, 8, 8)
    parts = []
    for lo, hi in ((0, 3), (3, 4), (4, 6)):  # prefill, a single-token (GQA) step, two tokens
        parts.append(attn(x[:, lo:hi], bias=bias[:, :, lo:hi, :hi], cache=cache))
        cache.advance(hi - lo)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
