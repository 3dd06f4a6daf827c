"""The fast paths compute the same numbers as the plain ones."""

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_gpt
from torch import nn

from lmforge.infer.fast_linear import DecodeLinear, use_decode_linears
from lmforge.nn.fused import fused_projection, fused_projections
from lmforge.train.fused_ce import linear_cross_entropy


@pytest.mark.parametrize("chunk_rows", [7, 64, 1000])
def test_fused_cross_entropy_matches_cross_entropy_and_its_gradients(chunk_rows):
    torch.manual_seed(0)
    h = torch.randn(150, 24, dtype=torch.float64, requires_grad=True)
    w = torch.randn(53, 24, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 53, (150,))
    t[::5] = -100  # ignored positions
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=-100)
    ref_grads = torch.autograd.grad(ref, (h, w))
    ours = linear_cross_entropy(h, w, t, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(ours * 3.0, (h, w))  # an upstream scale is applied
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grads[0], 3.0 * ref_grads[0])
    torch.testing.assert_close(grads[1], 3.0 * ref_grads[1])


@pytest.mark.parametrize("rows", [150, 6000])  # plain path for few logits, chunks for many
def test_linear_cross_entropy_default_paths_agree_with_cross_entropy(rows):
    torch.manual_seed(0)
    h = torch.randn(rows, 24, dtype=torch.float64, requires_grad=True)
    w = torch.randn(53, 24, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 53, (rows,))
    t[::5] = -100
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=-100)
    ours = linear_cross_entropy(h, w, t)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref)
    for got, want in zip(torch.autograd.grad(ours, (h, w)), torch.autograd.grad(ref, (h, w))):
        torch.testing.assert_close(got, want)
    everything_ignored = torch.full((rows,), -100)
    assert linear_cross_entropy(h, w, everything_ignored).item() == 0.0


def test_fused_cross_entropy_under_bf16_autocast_matches_the_plain_path():
    """Under autocast the chunked products run in bf16 and the weight gradient still sums in fp32
    (it used to come out bf16 from the first chunk and fail to accumulate the next)."""
    torch.manual_seed(0)
    h = torch.randn(200, 16, requires_grad=True)
    w = torch.randn(1000, 16, requires_grad=True)
    t = torch.randint(0, 1000, (200,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), t)
        ours = linear_cross_entropy(h, w, t, chunk_rows=64)  # four chunks
    assert ours.dtype == torch.float32
    grads = torch.autograd.grad(ours, (h, w))
    assert [g.dtype for g in grads] == [torch.float32, torch.float32]
    torch.testing.assert_close(ours, ref, atol=2e-2, rtol=2e-2)
    for got, want in zip(grads, torch.autograd.grad(ref, (h, w))):
        assert (got - want).norm() / want.norm() < 2e-2


def test_fused_cross_entropy_without_grad():
    h, w, t = torch.randn(10, 8), torch.randn(11, 8), torch.randint(0, 11, (10,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t), F.cross_entropy(h @ w.t(), t))


@pytest.mark.parametrize("rows", [1, 3, 6, 8, 100])  # each product of fast_linear
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_features", [96, 40])  # 40: not a multiple of the column block
def test_decode_linear_equals_linear(rows, bias, out_features):
    torch.manual_seed(0)
    linear = nn.Linear(48, out_features, bias=bias)
    fast = DecodeLinear(linear)
    x = torch.randn(rows, 1, 48)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), linear(x), atol=1e-5, rtol=1e-5)
    assert fast.weight is linear.weight
    assert set(fast.state_dict()) == set(linear.state_dict())


def test_use_decode_linears_keeps_ties_and_trainability():
    from lmforge.models import GPT, get_preset

    model = GPT(get_preset("gpt2-tiny", vocab_size=64, hidden_size=32, num_layers=1, num_heads=2))
    keys = set(model.state_dict())
    use_decode_linears(model)
    assert isinstance(model.lm_head, DecodeLinear)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert set(model.state_dict()) == keys
    model(torch.randint(0, 64, (2, 5))).sum().backward()  # with grad: plain nn.Linear path
    assert model.layers[0].attn.q_proj.weight.grad is not None


class _Scaled(nn.Module):
    """A projection that is not a plain nn.Linear (as a LoRA wrapper would be)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.out_features = linear.out_features

    def forward(self, x):
        return 2 * self.linear(x)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [4, 96])  # below and above MIN_ROWS
def test_fused_projections_equal_separate_ones_with_gradients(rows, bias):
    torch.manual_seed(0)
    projections = [nn.Linear(16, n, bias=bias) for n in (16, 8, 8)]
    x = torch.randn(rows, 16, requires_grad=True)
    fused = fused_projections(x, projections)
    sum((i + 1) * y.square().sum() for i, y in enumerate(fused)).backward()
    fused_grads = [x.grad] + [p.weight.grad for p in projections]
    x.grad = None
    for p in projections:
        p.weight.grad = None
    separate = [p(x) for p in projections]
    sum((i + 1) * y.square().sum() for i, y in enumerate(separate)).backward()
    for a, b in zip(
        fused + fused_grads, separate + [x.grad] + [p.weight.grad for p in projections]
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_projections_call_substituted_modules():
    torch.manual_seed(0)
    plain = nn.Linear(16, 16)
    wrapped = _Scaled(nn.Linear(16, 8))
    x = torch.randn(64, 16)
    q, k = fused_projections(x, [plain, wrapped])
    torch.testing.assert_close(k, wrapped(x))
    torch.testing.assert_close(q, plain(x))
    side_by_side = fused_projection(x, [plain, wrapped])  # (64, 16 + 8)
    torch.testing.assert_close(side_by_side, torch.cat([plain(x), wrapped(x)], dim=-1))


def _llama():
    return tiny_gpt("llama-tiny", vocab_size=64).eval()


def test_decode_groups_share_one_buffer_and_compute_the_same_logits():
    model, reference = _llama(), _llama()
    ids = torch.randint(0, 64, (3, 6))
    use_decode_linears(model)
    attn, mlp = model.layers[0].attn, model.layers[0].mlp
    group = attn.q_proj.decode_group
    assert group.serves([attn.q_proj, attn.k_proj, attn.v_proj])
    assert attn.k_proj.weight.untyped_storage().data_ptr() == group.weight.data_ptr()
    assert mlp.gate_proj.decode_group.serves([mlp.gate_proj, mlp.up_proj])
    assert set(model.state_dict()) == set(reference.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), atol=1e-5, rtol=1e-5)
        for t in range(ids.size(1)):  # one row at a time: the grouped decoding product
            rows = model(ids[:, : t + 1])[:, -1]
            torch.testing.assert_close(
                rows, reference(ids[:, : t + 1])[:, -1], atol=1e-5, rtol=1e-5
            )


def test_a_replaced_weight_retires_its_decode_group(tmp_path):
    from lmforge.models.loading import load_model, save_model

    model = use_decode_linears(_llama())
    attn = model.layers[0].attn
    attn.q_proj.weight.data = torch.zeros_like(attn.q_proj.weight)  # no longer a view
    assert not attn.q_proj.decode_group.serves([attn.q_proj, attn.k_proj, attn.v_proj])
    x = torch.randn(1, 1, 32)
    with torch.no_grad():
        q, _, _ = fused_projections(x, [attn.q_proj, attn.k_proj, attn.v_proj])
    assert q.abs().max() == 0  # the replaced weight was used, not the stale buffer
    save_model(model, tmp_path)  # views of one buffer are saved as tensors of their own
    loaded = load_model(tmp_path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
