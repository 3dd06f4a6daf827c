"""The training loop shared by every objective.

    for step in range(start, max_steps):
        lr <- warmup + cosine schedule(step)
        for each of grad_accum micro-batches:       # gradients add up; DDP syncs only on the last
            loss = objective(model, batch) / grad_accum
            loss.backward()
        clip the global gradient norm; AdamW step
        every log_interval: metrics.jsonl (loss averaged over the interval), progress bar
        every eval_interval: exact validation loss over a fixed set of batches
        every checkpoint_interval: atomic checkpoint (model, optimizer, RNG, step)

Batches are drawn by a generator seeded from (seed, rank, step, micro-batch), so the data stream is
a pure function of the step: a resumed run sees exactly the batches the uninterrupted one would.
The data object has `get_batch(split, batch_size, block_size, generator)` and
`iter_eval_batches(split, batch_size, block_size, max_batches)`; a batch is a tuple of tensors
whose last holds the targets: token windows (x, y) for pre-training (data/shards.py), (input_ids,
attention_mask, labels) or (features, labels) for classification (data/classification.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lmforge.device import autocast, resolve_device, resolve_precision, tune_cpu_allocator
from lmforge.errors import UserError
from lmforge.train import checkpoint as ckpt
from lmforge.train.dist import DistInfo, all_reduce_mean, barrier
from lmforge.train.metrics import MetricsLog
from lmforge.train.optim import clip_grad_norm, make_adamw
from lmforge.train.schedule import cosine_lr


@dataclass
class TrainConfig:
    """Optimisation, evaluation and checkpointing of one run."""

    objective: str = "causal_lm"
    """Loss function, from train/losses.py OBJECTIVES."""
    max_steps: int = 2000
    """Optimizer steps in the run."""
    batch_size: int = 12
    """Sequences per micro-batch (per process)."""
    block_size: int = 64
    """Tokens per training sequence (at most model.max_seq_len)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""
    head_lr: float = 0.0
    """Peak learning rate of a task model's `head` (a fresh layer), when it must differ from `lr`
    (prompt tuning's large step would throw a fresh head about); 0 = `lr`. It follows the same
    schedule, scaled by head_lr / lr."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    decay_steps: int | None = None
    """Step at which the cosine reaches min_lr (default: max_steps)."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not biases or norms)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    eval_interval: int = 250
    """Steps between validation-loss evaluations (and at the end)."""
    eval_batches: int = 20
    """Validation batches per evaluation (fixed, in order; 0 = the whole split)."""
    log_interval: int = 10
    """Steps between metrics records."""
    checkpoint_interval: int = 500
    """Steps between checkpoints (and at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    seed: int = 1337
    """Seed for initialisation, dropout and data order."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    precision: str = "auto"
    """auto (bf16 where the hardware runs it natively, else fp32), fp32, bf16 or fp16."""
    compile: bool = False
    """Compile the model with torch.compile (pays off on GPUs; rarely on CPUs)."""
    max_minutes: float = 0.0
    """Stop (with a checkpoint) after this many minutes of training; 0 = no limit."""
    mlm_probability: float = 0.15
    """Masked LM (objective mlm): share of the non-special tokens selected for prediction."""
    whole_word_mask: bool = False
    """Masked LM (objective mlm): select whole words (a WordPiece word with its ## pieces)."""
    noise_density: float = 0.15
    """Span corruption (objective span): share of each block's tokens dropped into spans."""
    mean_noise_span_length: float = 3.0
    """Span corruption (objective span): mean length of a dropped span, in tokens."""

    def __post_init__(self) -> None:
        positive = (
            "max_steps",
            "batch_size",
            "block_size",
            "grad_accum",
            "eval_interval",
            "log_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError("need 0 <= train.min_lr <= train.lr and train.lr > 0")
        if self.head_lr < 0:
            raise ValueError(f"train.head_lr must be >= 0 (0 = train.lr), got {self.head_lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("train.beta1 and train.beta2 must be in [0, 1)")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("train.warmup_steps, grad_clip and weight_decay must be >= 0")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"train.mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"train.noise_density must be in (0, 1), got {self.noise_density}")
        if not self.mean_noise_span_length >= 1.0:
            raise ValueError(
                f"train.mean_noise_span_length must be >= 1, got {self.mean_noise_span_length}"
            )


@dataclass
class TrainResult:
    steps: int
    train_loss: float
    val_loss: float | None
    tokens: int
    seconds: float
    tokens_per_second: float
    stopped_early: bool


def batch_generator(seed: int, rank: int, step: int, micro: int, accum: int) -> torch.Generator:
    """The generator that draws micro-batch `micro` of `step` on `rank` (a pure function)."""
    key = (seed * 1_000_003 + rank * 7_919 + step * accum + micro) % (2**63 - 1)
    return torch.Generator().manual_seed(key)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    objective: Callable,
    data,
    cfg: TrainConfig,
    device: torch.device,
    dtype: torch.dtype,
    dist: DistInfo = DistInfo(),
) -> float:
    """Mean validation loss over the first `eval_batches` fixed batches (shared across ranks)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = data.iter_eval_batches(
        "val", cfg.batch_size, cfg.block_size, cfg.eval_batches or None
    )
    for i, batch in enumerate(batches):
        if i % dist.world_size != dist.rank:
            continue
        batch = tuple(t.to(device) for t in batch)
        with autocast(device, dtype):
            loss = objective(model, batch)
        total += loss.item() * batch[-1].numel()  # weighted by the number of targets
        count += batch[-1].numel()
    model.train(was_training)
    if dist.enabled:
        total = all_reduce_mean(total, dist, device) * dist.world_size
        count = round(all_reduce_mean(count, dist, device) * dist.world_size)
    return total / max(count, 1)


def _rng_states(device: torch.device, dist: DistInfo) -> dict[str, torch.Tensor]:
    """Every rank's RNG state, gathered onto each rank (keys `cpu.<rank>`, `cuda.<rank>`)."""
    local = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(device)
    if not dist.enabled:
        return {f"{k}.0": v for k, v in local.items()}
    import torch.distributed as tdist

    out = {}
    for name, state in local.items():
        gathered = [torch.empty_like(state) for _ in range(dist.world_size)]
        tdist.all_gather(gathered, state.to(device) if device.type == "cuda" else state)
        out.update({f"{name}.{r}": g.cpu() for r, g in enumerate(gathered)})
    return out


def _restore_rng(states: dict[str, torch.Tensor], device: torch.device, rank: int) -> None:
    if f"cpu.{rank}" in states:
        torch.set_rng_state(states[f"cpu.{rank}"])
    if device.type == "cuda" and f"cuda.{rank}" in states:
        torch.cuda.set_rng_state(states[f"cuda.{rank}"], device)


def train(
    model: nn.Module,
    objective: Callable,
    data,
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    dist: DistInfo = DistInfo(),
    show_progress: bool = True,
) -> TrainResult:
    """Train `model` on `data` with `objective`, writing metrics and checkpoints into `run_dir`."""
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    dtype = resolve_precision(cfg.precision, device)
    if device.type == "cpu":
        tune_cpu_allocator()
    context = getattr(getattr(model, "config", None), "max_seq_len", None)
    if context is not None and cfg.block_size > context:
        raise UserError(
            f"train.block_size {cfg.block_size} exceeds the model context "
            f"{context}; lower train.block_size or raise model.max_seq_len"
        )
    model.to(device).train()
    head_scale = cfg.head_lr / cfg.lr if cfg.head_lr else 1.0
    betas = (cfg.beta1, cfg.beta2)
    optimizer = make_adamw(
        model, cfg.lr, cfg.weight_decay, betas, device=device, head_scale=head_scale
    )
    trained = [p for group in optimizer.param_groups for p in group["params"]]

    start_step, tokens_seen, elapsed_before = 0, 0, 0.0
    if resume:
        path = ckpt.latest_checkpoint(run_dir)
        if path is None:
            raise UserError(f"nothing to resume: {run_dir} has no checkpoints")
        state, rng = ckpt.load_checkpoint(path, model, optimizer)
        start_step, tokens_seen = state["step"], state.get("tokens", 0)
        elapsed_before = state.get("elapsed_s", 0.0)
        _restore_rng(rng, device, dist.rank)
        if start_step >= cfg.max_steps:
            raise UserError(
                f"{path.name} is already at step {start_step} >= train.max_steps {cfg.max_steps}; "
                "raise --train.max_steps to train further"
            )
    metrics = (
        MetricsLog(run_dir / "metrics.jsonl", start_step if resume else None)
        if dist.is_main
        else None
    )

    train_model: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # a model whose objective leaves some parameters without gradient (BERT's pooler)
            find_unused_parameters=getattr(model, "has_unused_parameters", False),
        )
    if cfg.compile:
        train_model = torch.compile(train_model)

    decay_steps = cfg.decay_steps or cfg.max_steps
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * dist.world_size
    bar = tqdm(
        total=cfg.max_steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=not (show_progress and dist.is_main),
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    window_t, window_tokens, window_steps = t0, 0, 0
    window_loss = torch.zeros((), device=device)  # summed over the steps since the last record
    loss_value, val_loss, step = float("nan"), None, start_step
    stopped_early = False

    def save(at_step: int) -> None:
        rng = _rng_states(device, dist)
        if dist.is_main:
            state = {
                "tokens": tokens_seen,
                "elapsed_s": elapsed_before + time.perf_counter() - t0,
                "val_loss": val_loss,
            }
            ckpt.save_checkpoint(
                run_dir, at_step, model, optimizer, state, rng, cfg.keep_checkpoints
            )
        barrier(dist)

    for step in range(start_step, cfg.max_steps):
        lr = cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, decay_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # older checkpoints: none
        for micro in range(cfg.grad_accum):
            gen = batch_generator(cfg.seed, dist.rank, step, micro, cfg.grad_accum)
            batch = data.get_batch("train", cfg.batch_size, cfg.block_size, gen)
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            sync = micro == cfg.grad_accum - 1
            ctx = train_model.no_sync() if (dist.enabled and not sync) else nullcontext()
            with ctx:
                with autocast(device, dtype):
                    loss = objective(train_model, batch) / cfg.grad_accum
                loss.backward()
            window_loss += loss.detach()
        grad_norm = clip_grad_norm(trained, cfg.grad_clip) if cfg.grad_clip > 0 else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += tokens_per_step
        window_tokens += tokens_per_step
        window_steps += 1
        done = step + 1

        if done % cfg.log_interval == 0 or done == cfg.max_steps:
            loss_value = all_reduce_mean(window_loss.item() / window_steps, dist, device)
            if not math.isfinite(loss_value):
                raise UserError(f"loss became {loss_value} at step {done}; lower train.lr")
            now = time.perf_counter()
            tps = window_tokens / max(now - window_t, 1e-9)
            window_t, window_tokens, window_steps = now, 0, 0
            window_loss.zero_()
            if metrics:
                metrics.log(
                    {
                        "step": done,
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": float(grad_norm) if grad_norm is not None else None,
                        "tokens": tokens_seen,
                        "tokens_per_s": tps,
                        "elapsed_s": elapsed_before + now - t0,
                    }
                )
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        bar.update(1)

        out_of_time = cfg.max_minutes > 0 and (time.perf_counter() - t0) > cfg.max_minutes * 60
        if cfg.max_minutes > 0 and dist.enabled:  # every rank must stop at the same step
            out_of_time = all_reduce_mean(float(out_of_time), dist, device) > 0
        if done % cfg.eval_interval == 0 or done == cfg.max_steps or out_of_time:
            val_loss = evaluate(model, objective, data, cfg, device, dtype, dist)
            if metrics:
                metrics.log({"step": done, "val_loss": val_loss})
            if dist.is_main and show_progress:
                train_part = f"train loss {loss_value:.4f}, " if math.isfinite(loss_value) else ""
                bar.write(f"step {done}: {train_part}val loss {val_loss:.4f}")
        if (
            (cfg.checkpoint_interval and done % cfg.checkpoint_interval == 0)
            or done == cfg.max_steps
            or out_of_time
        ):
            save(done)
        if out_of_time:
            stopped_early = done < cfg.max_steps
            break
    bar.close()
    seconds = time.perf_counter() - t0
    trained_tokens = (step + 1 - start_step) * tokens_per_step
    return TrainResult(
        steps=step + 1,
        train_loss=loss_value,
        val_loss=val_loss,
        tokens=tokens_seen,
        seconds=elapsed_before + seconds,
        tokens_per_second=trained_tokens / max(seconds, 1e-9),
        stopped_early=stopped_early,
    )
