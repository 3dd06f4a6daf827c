"""`lmforge pretrain`: pre-train a model of any family on prepared token shards.

    lmforge prepare --input shakespeare --tokenizer tok/ --out data/shakespeare
    lmforge pretrain --config run.yaml --out runs/first [--train.lr=3e-4 ...] [--resume]
    lmforge pretrain --objective mlm --data.dir=data/wp --out runs/bert   # a BERT, by masked LM

The model section names a preset or a family (models/registry.py); the objective defaults to the
family's own (causal_lm for gpt) and must be one the family trains with. `--objective X` alone picks
the family whose objective X is, starting from its default preset.

The run directory ends up holding config.yaml, metrics.jsonl, checkpoints/, loss.png, report.md and
the final model (config.json, model.safetensors, tokenizer.json), so `lmforge generate --model RUN`
uses it as it is.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge import config as configlib
from lmforge.data.shards import TokenData
from lmforge.device import resolve_device, resolve_precision
from lmforge.errors import UserError
from lmforge.fileio import write_text_atomic
from lmforge.infer import SamplingParams, generate
from lmforge.models import GPT, get_preset, registry
from lmforge.models.loading import check_vocab, save_model
from lmforge.tokenizer import Tokenizer
from lmforge.train.dist import DistInfo, barrier, init_distributed, shutdown
from lmforge.train.loop import TrainConfig, TrainResult, train
from lmforge.train.losses import make_objective
from lmforge.train.metrics import plot_loss_curves


@dataclass
class DataConfig:
    dir: str = ""
    """Prepared data directory (from `lmforge prepare`)."""


@dataclass
class PretrainConfig:
    model: Any = field(default_factory=lambda: get_preset("gpt2-tiny"))
    """The config of any registered model family (built by `registry.build_model_config`)."""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_config(raw: dict) -> PretrainConfig:
    """Build a PretrainConfig from a nested mapping (YAML merged with overrides).

    Unless the model section sets `vocab_size`, it is taken from the prepared data's tokenizer.
    A model section without preset or family gets the default preset of the objective's family.
    """
    raw = dict(raw)
    model_raw = raw.pop("model", None) or {}
    if isinstance(model_raw, str):
        model_raw = {"preset": model_raw}
    model_raw = dict(model_raw)
    train_raw = dict(raw.get("train") or {})
    objective = train_raw.get("objective")
    if "preset" not in model_raw and "family" not in model_raw:
        family = registry.family_for_objective(objective) if objective else None
        model_raw["preset"] = family.default_preset if family else "gpt2-tiny"
    data_dir = (raw.get("data") or {}).get("dir")
    if "vocab_size" not in model_raw and data_dir:
        model_raw["vocab_size"] = TokenData.open(Path(data_dir)).vocab_size
    model = registry.build_model_config(model_raw)
    family = registry.family_of(model)
    objective = train_raw.setdefault("objective", family.objectives[0])
    if objective not in family.objectives:
        raise UserError(
            f"objective {objective!r} does not train a {family.name} model; "
            f"use {' or '.join(family.objectives)}, or a model of the "
            f"{registry.family_for_objective(objective).name} family for {objective}"
        )
    raw["train"] = train_raw
    cfg = configlib.build(PretrainConfig, raw)
    cfg.model = model
    return cfg


def config_to_dict(cfg: PretrainConfig) -> dict:
    """The run's config as plain data, the model section naming its family (for config.yaml)."""
    return {
        "model": cfg.model.to_dict(),
        "data": configlib.to_dict(cfg.data),
        "train": configlib.to_dict(cfg.train),
    }


def load_config(config_file: str | None, overrides: list[str], run_dir: Path, resume: bool):
    """The run's config: a resumed run starts from its saved config.yaml, then file, overrides."""
    saved = run_dir / "config.yaml" if resume else None
    return build_config(configlib.load_layers(config_file, overrides, saved))


def main(
    cfg: PretrainConfig,
    out: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    quiet: bool = False,
) -> TrainResult:
    """Pre-train; returns the TrainResult (on every rank). `quiet` skips samples and messages."""
    run_dir = Path(out)
    if not cfg.data.dir:
        raise UserError(
            "no data: set data.dir (e.g. --data.dir=data/shakespeare from `lmforge prepare`)"
        )
    data = TokenData.open(Path(cfg.data.dir))
    tokenizer = Tokenizer.from_file(Path(cfg.data.dir))
    check_vocab(tokenizer, cfg.model, cfg.data.dir)
    if data.vocab_size > cfg.model.vocab_size:
        raise UserError(
            f"data has token ids up to {data.vocab_size - 1} but model.vocab_size is "
            f"{cfg.model.vocab_size}"
        )
    if resume and not (run_dir / "checkpoints").is_dir():
        raise UserError(f"nothing to resume: {run_dir} has no checkpoints")
    if (
        not resume
        and (run_dir / "checkpoints").is_dir()
        and any((run_dir / "checkpoints").iterdir())
    ):
        raise UserError(
            f"{run_dir} already holds a run; pass --resume to continue it or pick another --out"
        )

    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    try:
        return _run(cfg, run_dir, data, tokenizer, resume, dist, device, show_progress, quiet)
    finally:
        shutdown(dist)


def _run(
    cfg,
    run_dir: Path,
    data,
    tokenizer,
    resume: bool,
    dist: DistInfo,
    device: torch.device,
    show_progress: bool,
    quiet: bool,
) -> TrainResult:
    torch.manual_seed(cfg.train.seed)
    model = registry.build_model(cfg.model)
    objective = make_objective(cfg.train.objective, tokenizer, cfg.model, cfg.train)
    if hasattr(objective, "check_data"):  # e.g. span corruption refuses data holding its sentinels
        objective.check_data(data)
    dtype = resolve_precision(cfg.train.precision, device)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", configlib.dump_yaml(config_to_dict(cfg)))
    if dist.is_main and not quiet:
        print(
            f"model: {model.num_params() / 1e6:.2f}M parameters, "
            f"{model.flops_per_token(cfg.train.block_size) / 1e6:.1f} MFLOPs/token (training); "
            f"data: {data.num_tokens('train'):,} train / {data.num_tokens('val'):,} val tokens; "
            f"device {device.type}, {str(dtype).removeprefix('torch.')}, "
            f"{dist.world_size} process(es)"
        )
    barrier(dist)
    result = train(
        model,
        objective,
        data,
        cfg.train,
        run_dir,
        resume=resume,
        dist=dist,
        show_progress=show_progress,
    )
    if dist.is_main and not quiet:
        model.eval()
        save_model(model, run_dir, tokenizer)
        plot_loss_curves(run_dir / "metrics.jsonl", run_dir / "loss.png", title=run_dir.name)
        title, make_samples = REPORT_SAMPLES[registry.family_of(model).name]
        samples = make_samples(model, tokenizer, data)
        write_report(run_dir, cfg, model, data, result, samples, dtype, title)
        print(
            f"done: {result.steps} steps, val loss {result.val_loss:.4f}, "
            f"{result.tokens_per_second:,.0f} tokens/s -> {run_dir}"
        )
    barrier(dist)
    return result


def decoder_samples(model: GPT, tokenizer, data) -> list[tuple[str, str]]:
    """Sampled continuations of a few validation passages (the report of a decoder run)."""
    return sample_texts(model, tokenizer, sample_prompts(data, tokenizer))


def masked_lm_samples(model, tokenizer, data, count: int = 3) -> list[tuple[str, str]]:
    """Fill-mask guesses for one masked word in each of a few validation passages (BERT)."""
    from lmforge.recipes.fill_mask import MASK_TOKEN, predict_masked

    val, length = data.split("val"), min(24, model.config.max_seq_len - 2)
    samples = []
    for start in (i * max(len(val) - length, 0) // count for i in range(count)):
        ids = [int(t) for t in val[start : start + length]]
        words = [i for i in range(len(ids)) if _is_whole_word(tokenizer, ids, i)]
        if not words:
            continue
        target = words[len(words) // 2]  # a word in the middle of the passage
        truth, ids[target] = tokenizer.id_to_token(ids[target]), tokenizer.token_to_id(MASK_TOKEN)
        (prediction,) = predict_masked(model, tokenizer, ids, top_k=5)
        guesses = ", ".join(f"{c.token} {c.probability:.2f}" for c in prediction.candidates)
        samples.append((tokenizer.decode(ids), f"\n-> {guesses} (masked: {truth})"))
    return samples


def _is_whole_word(tokenizer, ids: list[int], i: int) -> bool:
    """Token i is an ordinary one-piece word: not special, no `##` piece at it or after it."""
    token = tokenizer.id_to_token(ids[i]) or ""
    after = (tokenizer.id_to_token(ids[i + 1]) or "") if i + 1 < len(ids) else ""
    special = token in tokenizer.special_tokens
    return token.isalpha() and not special and not after.startswith("##")


def span_samples(model, tokenizer, data, count: int = 3) -> list[tuple[str, str]]:
    """A few span-corrupted validation passages and the model's greedy fills (T5)."""
    from lmforge.infer.seq2seq import sample_ids
    from lmforge.train.span import SpanCorruption, sentinel_ids

    val = data.split("val")
    length = min(32, len(val) - 1)
    starts = [i * (len(val) - length) // count for i in range(count)]
    windows = torch.tensor([[int(t) for t in val[s : s + length]] for s in starts])  # (n, T)
    objective = SpanCorruption(sentinel_ids(tokenizer), tokenizer.eos_id)
    inputs, targets = objective.corrupt(windows, torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    params = SamplingParams(temperature=0, max_new_tokens=2 * targets.size(1))
    fills = sample_ids(model, inputs.to(device), params=params, eos_id=tokenizer.eos_id)
    return [
        (
            tokenizer.decode(i[:-1].tolist()),
            f"\n-> {tokenizer.decode(f)}\n   (dropped: {tokenizer.decode(t[:-1].tolist())})",
        )
        for i, f, t in zip(inputs, fills, targets)
    ]


REPORT_SAMPLES: dict[str, tuple[str, Callable[[Any, Any, Any], list[tuple[str, str]]]]] = {
    "gpt": ("Samples (temperature 0.8, top-k 50)", decoder_samples),
    "bert": ("Fill-mask predictions (top 5; one word of each passage masked)", masked_lm_samples),
    "t5": ("Span corruption: validation inputs and the model's greedy fills", span_samples),
}
"""Family name -> (heading in report.md, (model, tokenizer, data) -> [(input, output)])."""


def sample_prompts(data, tokenizer, count: int = 2, length: int = 6) -> list[str]:
    """A newline plus the first words of a few validation passages: prompts that fit any corpus."""
    val = data.split("val")
    starts = [i * len(val) // (count + 1) for i in range(1, count + 1)]
    prompts = ["\n"] if _encodable(tokenizer, "\n") else []
    for start in starts:
        text = tokenizer.decode([int(t) for t in val[start : start + length]]).strip()
        if text and "\ufffd" not in text:
            prompts.append(text)
    return prompts or [tokenizer.decode([int(val[0])])]


def sample_texts(
    model: GPT, tokenizer, prompts: list[str], max_new_tokens: int = 96, seed: int = 0
) -> list[tuple[str, str]]:
    """A few sampled continuations (temperature 0.8, top-k 50), for the report."""
    params = SamplingParams(temperature=0.8, top_k=50, max_new_tokens=max_new_tokens, seed=seed)
    outs = generate(model, tokenizer, prompts, params)
    return list(zip(prompts, outs))


def _encodable(tokenizer, text: str) -> bool:
    try:
        return len(tokenizer.encode(text)) > 0
    except UserError:
        return False


def write_report(
    run_dir: Path,
    cfg: PretrainConfig,
    model: GPT,
    data,
    result: TrainResult,
    samples: list[tuple[str, str]],
    dtype: torch.dtype,
    samples_title: str = "Samples",
) -> None:
    sources = data.meta.get("sources") or []
    source_lines = [
        f"- {s.get('name')}: {s.get('package')}=={s.get('version')}, licence "
        f"{s.get('licence')}, sha256 `{str(s.get('sha256'))[:16]}…`"
        for s in sources
    ]
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    lines = [
        f"# Pre-training report: {run_dir.name}",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node() or 'this machine'} "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {str(dtype).removeprefix('torch.')}).",
        "",
        "## Result",
        "",
        "| metric | value |",
        "|---|---|",
        f"| steps | {result.steps:,} |",
        f"| tokens seen | {result.tokens:,} |",
        f"| final train loss | {result.train_loss:.4f} |",
        f"| validation loss | {val} |",
        f"| throughput | {result.tokens_per_second:,.0f} tokens/s |",
        f"| wall time (training) | {result.seconds:.1f} s |",
        f"| parameters | {model.num_params():,} ({model.num_params(non_embedding=True):,} non-embedding) |",
        f"| training FLOPs/token | {model.flops_per_token(cfg.train.block_size) / 1e6:.2f} M |",
        "",
        "![loss curve](loss.png)",
        "",
        "## Data",
        "",
        f"- directory: `{cfg.data.dir}`",
        f"- tokens: {data.num_tokens('train'):,} train, {data.num_tokens('val'):,} validation",
        f"- vocabulary: {data.vocab_size} tokens",
        *source_lines,
        "",
        f"## {samples_title}",
        "",
    ]
    for prompt, text in samples:
        lines += [f"Prompt `{prompt!r}`:", "", "```", (prompt + text).strip("\n"), "```", ""]
    lines += [
        "## Config",
        "",
        "```yaml",
        configlib.dump_yaml(config_to_dict(cfg)).rstrip(),
        "```",
        "",
    ]
    write_text_atomic(run_dir / "report.md", "\n".join(lines))
