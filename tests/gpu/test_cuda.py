"""What only a CUDA GPU can check: bf16 autocast chosen by `precision: auto`, training in bf16, KV-cached
decoding and the fused SDPA kernels on the GPU, `train.compile`, and the pretrain CLI on cuda.

Marked `gpu` (deselected by the default run) and skipped where no CUDA GPU is available. Models are
tiny (tests/helpers.py), so the whole file runs in a minute or two, most of it compiling.

    python -m pytest -o addopts="" -m gpu tests/gpu -q
"""

import json

import numpy as np
import pytest
import torch
from helpers import tiny_gpt
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmforge.data.shards import TokenData
from lmforge.device import autocast, resolve_device, resolve_precision
from lmforge.infer import Engine, SamplingParams, compile_decoding
from lmforge.train.loop import TrainConfig, train
from lmforge.train.losses import causal_lm_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")
VOCAB = 97


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got - want‖ / ‖want‖, in fp32."""
    got, want = got.float(), want.float()
    return float((got - want).norm() / want.norm())


def confident_gpt(preset: str, seed: int = 0, **overrides):
    """A tiny model with large weights (varied, input-sensitive predictions), in eval mode."""
    model = tiny_gpt(preset, VOCAB, seed, **overrides).eval()
    model.init_weights(std=0.3)
    return model


def periodic_data(vocab: int, length: int = 60_000) -> TokenData:
    """A learnable stream: a repeating pattern of 37 tokens with 5% noise."""
    rng = np.random.default_rng(0)
    stream = np.tile(rng.integers(0, vocab, 37), length // 37 + 1)[:length]
    noise = rng.random(stream.size) < 0.05
    stream[noise] = rng.integers(0, vocab, noise.sum())
    split = length * 9 // 10
    return TokenData.from_arrays(
        stream[:split].astype(np.uint16), stream[split:].astype(np.uint16), vocab
    )


def train_records(model, data, tmp_path, **overrides) -> list[dict]:
    """Train `model` on cuda with `precision: auto`; return the metrics records."""
    settings = dict(
        max_steps=60,
        batch_size=16,
        block_size=64,
        lr=3e-3,
        warmup_steps=5,
        log_interval=5,
        eval_interval=60,
        eval_batches=2,
        checkpoint_interval=0,
        device="cuda",
    )
    cfg = TrainConfig(**{**settings, **overrides})
    train(model, causal_lm_loss, data, cfg, tmp_path, show_progress=False)
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_auto_precision_is_bf16_autocast_on_cuda():
    assert resolve_device("auto").type == "cuda"
    dtype = resolve_precision("auto", CUDA)
    assert dtype == torch.bfloat16
    a = torch.randn(16, 16, device=CUDA)
    with autocast(CUDA, dtype):
        assert (a @ a).dtype == torch.bfloat16


def test_bf16_training_on_cuda_lowers_the_loss(tmp_path):
    """The loop's default precision on cuda (bf16 autocast, fp32 weights), with a vocabulary large
    enough that the output layer's loss runs in several chunks (train/fused_ce.py)."""
    vocab = 50304  # 64 x 64 rows of logits: two chunks of at most 2^27 / vocab rows
    model = tiny_gpt("gpt2-tiny", vocab)
    recs = train_records(model, periodic_data(vocab), tmp_path, batch_size=64)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert [r["val_loss"] for r in recs if "val_loss" in r][-1] < 0.6 * losses[0]
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_kv_cached_decoding_equals_the_full_forward_pass_on_cuda(preset, dtype, tolerance):
    model = confident_gpt(preset).to(CUDA, dtype)
    x = torch.randint(0, VOCAB, (2, 20), device=CUDA)
    with torch.inference_mode():
        full = model(x)  # (2, 20, V)
        cache = model.new_cache(2, 20)
        steps = [model(x[:, :12], cache=cache)]
        steps += [model(x[:, t : t + 1], cache=cache) for t in range(12, 20)]
    assert cache.keys.device.type == "cuda" and cache.keys.dtype == dtype
    assert relative_error(torch.cat(steps, dim=1), full) < tolerance


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_cuda_forward_and_greedy_tokens_equal_the_cpu_ones(preset):
    """fp32 on both devices: the same logits, and the engine's greedy tokens for a padded batch."""
    model = confident_gpt(preset)
    x = torch.randint(0, VOCAB, (3, 30))
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42], [3]]
    params = SamplingParams(temperature=0, max_new_tokens=12)
    with torch.inference_mode():
        on_cpu = model(x)
    cpu_tokens = Engine(model).generate_ids(prompts, params)
    model.to(CUDA)
    with torch.inference_mode():
        assert relative_error(model(x.to(CUDA)).cpu(), on_cpu) < 1e-5
    assert Engine(model).generate_ids(prompts, params) == cpu_tokens


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_flash_attention_runs_a_bf16_training_step(preset):
    """Training attention (causal, no mask) takes the flash kernel: forcing it works forward and
    backward, dropout included, and gives the logits of the reference (math) kernel."""
    model = confident_gpt(preset, dropout=0.1).to(CUDA, torch.bfloat16)
    x = torch.randint(0, VOCAB, (4, 64), device=CUDA)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        reference = model(x)
    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        assert relative_error(model(x), reference) < 2e-2
    model.train()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        loss = causal_lm_loss(model, (x[:, :-1], x[:, 1:]))
        loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_memory_efficient_attention_runs_masked_cached_steps():
    """A padded batch (boolean mask) and one-token steps over a cache: the memory-efficient kernel
    takes masks, and gives the logits of the math kernel."""
    model = confident_gpt("llama-tiny").to(CUDA, torch.bfloat16)
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [40, 41, 42]]
    params = SamplingParams(temperature=0, max_new_tokens=8)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        fused = Engine(model).generate_ids(prompts, params)
    with sdpa_kernel(SDPBackend.MATH):
        reference = Engine(model).generate_ids(prompts, params)
    agree = sum(a == b for f, r in zip(fused, reference) for a, b in zip(f, r))
    assert agree >= 0.8 * sum(len(r) for r in reference)  # bf16: a rare tie may flip late


def test_compiled_bf16_training_on_cuda_lowers_the_loss(tmp_path):
    model = tiny_gpt("llama-tiny", VOCAB)
    recs = train_records(model, periodic_data(VOCAB), tmp_path, compile=True)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses


def test_compiled_decoding_on_cuda_gives_the_eager_tokens():
    model = confident_gpt("llama-tiny", max_seq_len=128).to(CUDA)
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    params = SamplingParams(temperature=0, max_new_tokens=12)
    expected = Engine(model).generate_ids(prompts, params)
    assert Engine(compile_decoding(model)).generate_ids(prompts, params) == expected


def test_pretrain_cli_on_cuda_writes_a_checkpoint_that_loads_back(tmp_path, capsys):
    from lmforge.cli import main as cli
    from lmforge.models.loading import load_model_and_tokenizer
    from lmforge.train import checkpoint as ckpt

    text = tmp_path / "corpus.txt"
    text.write_text("the king and the queen spoke of war and peace.\n" * 400, encoding="utf-8")
    tok, data, run = tmp_path / "tok", tmp_path / "data", tmp_path / "run"
    assert (
        cli(["tokenizer", "train", "--input", str(text), "--kind", "char", "--out", str(tok)]) == 0
    )
    assert cli(["prepare", "--input", str(text), "--tokenizer", str(tok), "--out", str(data)]) == 0
    args = [
        "pretrain",
        "--out",
        str(run),
        f"--data.dir={data}",
        "--model.num_layers=2",
        "--model.max_seq_len=64",
        "--train.batch_size=16",
        "--train.block_size=64",
        "--train.lr=3e-3",
        "--train.warmup_steps=5",
        "--train.eval_interval=20",
        "--train.eval_batches=2",
        "--train.log_interval=5",
        "--train.checkpoint_interval=20",
        "--train.device=cuda",
        "--no-progress",
    ]
    assert cli([*args, "--train.max_steps=20"]) == 0
    assert "device cuda, bfloat16" in capsys.readouterr().out
    assert cli([*args, "--resume", "--train.max_steps=40"]) == 0  # optimizer and RNG onto cuda
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert [r["step"] for r in recs if "loss" in r] == list(range(5, 45, 5))
    assert losses[-1] < 0.5 * losses[0], losses

    model, tokenizer = load_model_and_tokenizer(run, CUDA)
    assert next(model.parameters()).device.type == "cuda"
    cpu_model, _ = load_model_and_tokenizer(run)
    state, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(run), cpu_model)
    assert state["step"] == 40
    for (name, p), q in zip(model.state_dict().items(), cpu_model.state_dict().values()):
        torch.testing.assert_close(p.cpu(), q, msg=name)  # the final model is the last checkpoint
    capsys.readouterr()
    generate = ["generate", "--model", str(run), "--device", "cuda", "--temperature", "0"]
    assert cli([*generate, "--prompt", "the king", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip().startswith("the king")
