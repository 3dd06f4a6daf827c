"""Training loop: the loss falls, checkpoints round-trip, and a resumed run equals an uninterrupted one."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import tiny_gpt

from lmforge.data.shards import TokenData
from lmforge.errors import UserError
from lmforge.models import GPT
from lmforge.train import checkpoint as ckpt
from lmforge.train.loop import TrainConfig, train
from lmforge.train.losses import causal_lm_loss
from lmforge.train.optim import clip_grad_norm, make_adamw
from lmforge.train.schedule import cosine_lr


def periodic_data(vocab: int = 32) -> TokenData:
    """A learnable stream: a repeating pattern with a little noise."""
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, vocab, 23)
    stream = np.tile(pattern, 400)
    noise = rng.random(stream.size) < 0.05
    stream[noise] = rng.integers(0, vocab, noise.sum())
    return TokenData.from_arrays(
        stream[:8000].astype(np.uint16), stream[8000:].astype(np.uint16), vocab
    )


def tiny_model(seed: int = 0) -> GPT:
    return tiny_gpt(
        "llama-tiny", 32, seed, num_heads=2, num_kv_heads=1, max_seq_len=32, dropout=0.1
    )


CFG = TrainConfig(
    max_steps=24,
    batch_size=4,
    block_size=16,
    lr=3e-3,
    warmup_steps=4,
    eval_interval=8,
    eval_batches=4,
    log_interval=1,
    checkpoint_interval=8,
    device="cpu",
    precision="fp32",
    grad_accum=2,
    decay_steps=24,
)


def losses(run_dir) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss", r.get("val_loss"))) for r in recs]


def test_schedule_warmup_cosine_floor():
    assert cosine_lr(0, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert cosine_lr(9, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert cosine_lr(55, 1.0, 0.1, 10, 100) == pytest.approx(0.55)
    assert cosine_lr(100, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert cosine_lr(500, 1.0, 0.1, 10, 100) == pytest.approx(0.1)


@pytest.mark.parametrize("max_norm", [0.1, 1e6])  # clipped, and left alone
def test_clip_grad_norm_equals_torch(max_norm):
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, ref):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
    norm = clip_grad_norm(ours, max_norm)
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(ref, max_norm))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours])) <= max_norm + 1e-4


@pytest.mark.parametrize("head_scale", [1.0, 0.1])
def test_head_learning_rate_scales_only_the_head(head_scale):
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.backbone, model.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_adamw(
        model, 1e-2, 0.0, (0.9, 0.99), device=torch.device("cpu"), head_scale=head_scale
    )
    assert len(optimizer.param_groups) == (2 if head_scale == 1.0 else 4)  # as old checkpoints
    model.head(model.backbone(torch.randn(8, 4))).pow(2).sum().backward()
    optimizer.step()
    for name, p in model.named_parameters():  # Adam's first step moves each weight by lr
        step = (p.detach() - before[name]).abs()
        lr = 1e-2 * (head_scale if name.startswith("head.") else 1.0)
        torch.testing.assert_close(step, torch.full_like(step, lr), rtol=1e-3, atol=1e-7)
    with pytest.raises(ValueError, match="head_lr"):
        TrainConfig(head_lr=-1.0)


def test_loss_falls(tmp_path):
    data = periodic_data()
    result = train(
        tiny_model(),
        causal_lm_loss,
        data,
        replace(CFG, max_steps=60, decay_steps=None, lr=1e-2),
        tmp_path,
        show_progress=False,
    )
    curve = [v for s, v in losses(tmp_path) if s <= 5]
    assert result.val_loss < 0.7 * curve[0]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000060"


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    data = periodic_data()
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_model(), causal_lm_loss, data, CFG, full, show_progress=False)
    # stop at step 16 (as if killed after that checkpoint), then resume in a fresh model
    train(tiny_model(), causal_lm_loss, data, replace(CFG, max_steps=16), part, show_progress=False)
    (part / "metrics.jsonl").open("a").write(
        '{"step": 17, "loss": 99.0}\n{"trunc'
    )  # a killed write
    train(tiny_model(seed=123), causal_lm_loss, data, CFG, part, resume=True, show_progress=False)
    a, b = losses(full), losses(part)
    assert [s for s, _ in a] == [s for s, _ in b]
    np.testing.assert_allclose([v for _, v in a], [v for _, v in b], rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_and_pruning(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 32, (2, 8))).sum().backward()
    opt.step()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(
            tmp_path, step, model, opt, {"tokens": step}, {"cpu.0": torch.get_rng_state()}, keep=2
        )
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    other = tiny_model(seed=5)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    state, rng = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), other, opt2)
    assert state["step"] == 3 and state["tokens"] == 3
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters())
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, {}, {"cpu.0": torch.get_rng_state()})
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="corrupt or truncated"):
        ckpt.load_checkpoint(path, tiny_model(), opt)
    (path / "state.json").write_text("{ not json")
    with pytest.raises(UserError, match="corrupt"):
        ckpt.load_checkpoint(path, tiny_model(), opt)


def test_no_temporary_files_left_behind(tmp_path):
    train(
        tiny_model(),
        causal_lm_loss,
        periodic_data(),
        replace(CFG, max_steps=8),
        tmp_path,
        show_progress=False,
    )
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
