"""`lmforge finetune`: adapt a pre-trained model to a task with a method, on the shared training loop.

    lmforge finetune --model runs/quickstart --method full --task classify \
        --data rotten-tomatoes --out runs/rt-full [--train.max_steps=300 --data.train_subset=2000]
    lmforge finetune --model runs/bert --method feature --task classify --data reviews.jsonl \
        --out runs/reviews-feature

The pieces, each chosen from a dict by name:
    model   any family (gpt, bert, t5), any format `lmforge convert` reads (lmforge directory,
            Hugging Face directory, GGUF file), with its tokenizer
    task    supplies the head, the data, the loss and the metrics (`TASKS`; today `classify`:
            models/heads.py, data/classification.py, eval/classification.py)
    method  prepares the model in place: freezing, and later wrapping or replacing modules
            (peft/methods.py: `full`, `feature`)
and train/loop.py trains whatever is trainable (schedule, accumulation, clipping, checkpoints,
resume, metrics.jsonl, progress). The feature method runs the frozen backbone once over every
example and trains the head alone on the cached pooled features.

The run directory holds config.yaml, metrics.jsonl (training records, then the final validation and
test metrics), checkpoints/, loss.png, report.md (method, trainable / total parameters, peak memory,
wall time, checkpoint size, accuracy and macro F1) and the classifier itself: the backbone as a
model directory (config.json, model.safetensors, tokenizer.json) plus head.safetensors and
classifier.json. `lmforge classify --model RUN --text ...` and `recipes/classify.py`
`load_classifier(RUN)(texts)` use it. Single process (no torchrun) for now.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from lmforge import config as configlib
from lmforge.data.classification import FRAMINGS, SPLITS, TokenBatches, load_labelled_splits
from lmforge.device import resolve_device, resolve_precision
from lmforge.errors import UserError
from lmforge.eval.classification import ClassificationMetrics, classification_metrics, predict
from lmforge.fileio import write_text_atomic
from lmforge.models import registry
from lmforge.models.heads import SequenceClassifier, count_parameters, save_classifier
from lmforge.models.loading import check_vocab
from lmforge.peft import Method, cache_features, get_method
from lmforge.train import checkpoint as ckpt
from lmforge.train.loop import TrainConfig, TrainResult, train
from lmforge.train.losses import classification_loss
from lmforge.train.metrics import MetricsLog, plot_loss_curves


@dataclass
class ClassifyDataConfig:
    source: str = "rotten-tomatoes"
    """`rotten-tomatoes` or a .jsonl / .csv file of labelled texts (`--data`)."""
    text_field: str = "text"
    """Field (JSONL key or CSV column) holding the text."""
    label_field: str = "label"
    """Field holding the label (a string or an integer)."""
    labels: list[str] = field(default_factory=list)
    """The label set in index order (default: the sorted labels of the data)."""
    split_seed: int = 0
    """Seed of the permutation that cuts the examples into train / val / test."""
    val_fraction: float = 0.1
    """Share of the examples in the validation split."""
    test_fraction: float = 0.1
    """Share of the examples in the test split."""
    train_subset: int = 0
    """Keep only this many training examples (0 = all): short CPU runs."""


@dataclass
class HeadConfig:
    dropout: float = 0.1
    """Dropout on the pooled features before the classification layer."""
    pooling: str = "auto"
    """How hidden states become one vector: auto (gpt last token, bert cls, t5 mean), last, mean
    or cls (models/heads.py)."""


@dataclass
class FinetuneConfig:
    model: str = ""
    """Pre-trained model: lmforge or Hugging Face directory, or a GGUF file (`--model`)."""
    method: str = "full"
    """Fine-tuning method, from peft/methods.py METHODS (`--method`)."""
    task: str = "classify"
    """Task, from TASKS below (`--task`)."""
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation; `block_size` is the longest input in tokens (longer texts are truncated)."""


TRAIN_DEFAULTS = dict(
    max_steps=300,
    batch_size=16,
    block_size=128,
    warmup_steps=30,
    eval_interval=100,
    eval_batches=0,
    log_interval=10,
    checkpoint_interval=0,
    keep_checkpoints=1,
)
"""Train-section defaults of a fine-tuning run; a method's own (peft/methods.py) go on top."""


@dataclass
class FinetuneResult:
    train: TrainResult
    metrics: dict[str, ClassificationMetrics]
    """`val` and `test`."""
    trainable_params: int
    total_params: int
    seconds: float
    """Wall time of the whole run (loading, features, training, evaluation, saving)."""
    feature_seconds: float
    peak_rss_mb: float
    peak_cuda_mb: float | None
    checkpoint_bytes: int
    """Size of the weights a training checkpoint stores (what the method trains)."""
    classifier_bytes: int
    """Size of the saved classifier directory's weights (backbone + head)."""
    max_length: int
    """The longest input in tokens (train.block_size, at most the model's context)."""
    pooling: str
    """How the classifier pooled hidden states (models/heads.py POOLINGS)."""


# --------------------------------------------------------------------------------------- tasks
def setup_classify(backbone: nn.Module, tokenizer, cfg: FinetuneConfig):
    """(SequenceClassifier, TokenBatches, LabelledSplits): the data split and tokenized as the
    backbone's family frames text, and a head with one output per label."""
    d = cfg.data
    splits = load_labelled_splits(
        d.source,
        text_field=d.text_field,
        label_field=d.label_field,
        labels=d.labels,
        seed=d.split_seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        train_subset=d.train_subset,
    )
    family = registry.family_of(backbone).name
    framing = FRAMINGS[family](tokenizer, backbone.config)
    max_length = min(cfg.train.block_size, backbone.config.max_seq_len)  # longer texts are cut
    data = TokenBatches.from_splits(splits, tokenizer, framing, max_length)
    torch.manual_seed(cfg.train.seed)  # the head's initialisation
    labels = splits.label_names
    model = SequenceClassifier(backbone, len(labels), cfg.head.dropout, labels, cfg.head.pooling)
    return model, data, splits


def evaluate_classify(model, data, split, device, dtype) -> ClassificationMetrics:
    """Accuracy and macro F1 of `model` (classifier, or head on cached features) on `split`."""
    predicted, truth = predict(model, data, split, 64, device, dtype)
    return classification_metrics(predicted, truth, model.num_labels)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    setup: Callable
    """(backbone, tokenizer, cfg) -> (model holding the backbone and the task's head, batch
    source for train/loop.py, the examples)."""
    loss: Callable
    """The objective, loss = loss(model, batch) (train/losses.py)."""
    evaluate: Callable
    """(model, batch source, split, device, dtype) -> metrics of that split."""


TASKS: dict[str, Task] = {
    "classify": Task(
        "classify",
        "sequence classification: a head on pooled features; accuracy and macro F1",
        setup_classify,
        classification_loss,
        evaluate_classify,
    ),
}
"""Task name -> Task. `sft` (instruction tuning) and token/span/text-to-text tasks join here."""


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


# -------------------------------------------------------------------------------------- config
def build_config(raw: dict) -> FinetuneConfig:
    """A FinetuneConfig from a nested mapping: TRAIN_DEFAULTS, the method's defaults, then `raw`."""
    raw = dict(raw)
    method = get_method(str(raw.get("method") or "full"))
    task = get_task(str(raw.get("task") or "classify")).name
    given = dict(raw.get("train") or {})
    train_raw = {**TRAIN_DEFAULTS, **method.train_defaults, **given, "objective": task}
    if "lr" in given and "min_lr" not in given:  # keep the cosine's floor below a lowered peak
        train_raw["min_lr"] = _as_float(given["lr"], "train.lr") / 10
    raw["train"] = train_raw
    return configlib.build(FinetuneConfig, raw)


def _as_float(value, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"config key {where!r} must be a number, got {value!r}") from None


def load_config(
    config_file: str | None, overrides: list[str], flags: dict, run_dir: Path, resume: bool
) -> FinetuneConfig:
    """The run's config: a resumed run's config.yaml, then the file, `--section.key` overrides and
    the command's own flags (`--model`, `--method`, `--task`, `--data`)."""
    raw = configlib.load_layers(config_file, overrides, run_dir / "config.yaml" if resume else None)
    for key in ("model", "method", "task"):
        if flags.get(key) is not None:
            raw[key] = flags[key]
    if flags.get("data") is not None:
        raw = configlib.merge(raw, {"data": {"source": flags["data"]}})
    return build_config(raw)


# ---------------------------------------------------------------------------------------- run
def main(
    cfg: FinetuneConfig, out: str | Path, resume: bool = False, show_progress: bool = True
) -> FinetuneResult:
    """Fine-tune `cfg.model` for `cfg.task` with `cfg.method`, writing the run into `out`."""
    started = time.perf_counter()
    run_dir = Path(out)
    method = get_method(cfg.method)
    if not cfg.model:
        raise UserError("no model: pass --model DIR (a pre-trained model or run directory)")
    task = get_task(cfg.task)
    if run_dir.resolve() == Path(cfg.model).resolve():
        raise UserError("--out must differ from --model: the run would overwrite the base model")
    _check_run_dir(run_dir, resume)
    backbone, tokenizer = load_backbone(cfg.model)
    family = registry.family_of(backbone).name
    model, data, splits = task.setup(backbone, tokenizer, cfg)
    method.prepare(model, cfg)
    trainable, total = count_parameters(model)
    device = resolve_device(cfg.train.device)
    dtype = resolve_precision(cfg.train.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", configlib.dump_yaml(cfg))
    sizes = ", ".join(f"{splits.size(s):,} {s}" for s in SPLITS)
    print(
        f"{family} model {cfg.model}: {trainable:,} of {total:,} parameters trainable "
        f"({method.name}); data {splits.source.get('name')}: {sizes} examples, "
        f"{len(splits.label_names)} labels; device {device.type}, "
        f"{str(dtype).removeprefix('torch.')}"
    )

    feature_seconds = 0.0
    train_model: nn.Module = model
    train_data = data
    if method.cached_features:
        t0 = time.perf_counter()
        train_data = cache_features(model, data, device, dtype, show_progress=show_progress)
        feature_seconds = time.perf_counter() - t0
        train_model = model.head
    max_length = data.max_length
    train_cfg = replace(cfg.train, block_size=max_length)
    result = train(
        train_model,
        task.loss,
        train_data,
        train_cfg,
        run_dir,
        resume=resume,
        show_progress=show_progress,
    )

    metrics = {s: task.evaluate(train_model, train_data, s, device, dtype) for s in ("val", "test")}
    final = {"step": result.steps}
    for split, m in metrics.items():
        final.update(m.as_dict(f"{split}_"))
    MetricsLog(run_dir / "metrics.jsonl", resume_step=result.steps).log(final)

    model.to("cpu").eval()
    info = {
        "method": method.name,
        "base_model": str(cfg.model),
        "max_length": max_length,
        "data": splits.source.get("name"),
    }
    save_classifier(model, run_dir, tokenizer, info)
    plot_loss_curves(run_dir / "metrics.jsonl", run_dir / "loss.png", title=run_dir.name)
    latest = ckpt.latest_checkpoint(run_dir)
    weights = ("model.safetensors", "head.safetensors")
    out_result = FinetuneResult(
        train=result,
        metrics=metrics,
        trainable_params=trainable,
        total_params=total,
        seconds=time.perf_counter() - started,
        feature_seconds=feature_seconds,
        peak_rss_mb=peak_rss_mb(),
        peak_cuda_mb=(
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        checkpoint_bytes=_size(latest / "model.safetensors") if latest else 0,
        classifier_bytes=sum(_size(run_dir / w) for w in weights),
        max_length=max_length,
        pooling=model.pooling,
    )
    write_report(run_dir, cfg, method, family, splits, out_result, dtype)
    val, test = metrics["val"], metrics["test"]
    print(
        f"done: {result.steps} steps, val accuracy {val.accuracy:.4f} (macro F1 {val.macro_f1:.4f}), "
        f"test accuracy {test.accuracy:.4f} (macro F1 {test.macro_f1:.4f}) -> {run_dir}"
    )
    return out_result


def load_backbone(source: str | Path):
    """(model, tokenizer) from any format `lmforge convert` reads; the tokenizer is required."""
    from lmforge.recipes.convert import load_any

    if not Path(source).exists():
        raise UserError(f"model not found: {source}; pass a model or run directory (or GGUF file)")
    model, tokenizer, _ = load_any(source)
    if tokenizer is None:
        raise UserError(f"{source} has no tokenizer.json; fine-tuning needs the model's tokenizer")
    check_vocab(tokenizer, model.config, source)
    return model, tokenizer


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    checkpoints = run_dir / "checkpoints"
    if resume and not checkpoints.is_dir():
        raise UserError(f"nothing to resume: {run_dir} has no checkpoints")
    if not resume and checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise UserError(
            f"{run_dir} already holds a run; pass --resume to continue it or pick another --out"
        )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _human_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


# ------------------------------------------------------------------------------------- report
def write_report(
    run_dir: Path,
    cfg: FinetuneConfig,
    method: Method,
    family: str,
    splits,
    r: FinetuneResult,
    dtype: torch.dtype,
) -> None:
    src = splits.source
    train_labels = torch.tensor(splits.labels["train"])
    majority = int(torch.bincount(train_labels, minlength=len(splits.label_names)).argmax())
    test_labels = torch.tensor(splits.labels["test"])
    baseline = float((test_labels == majority).float().mean())
    cuda = f"{r.peak_cuda_mb:,.0f} MiB" if r.peak_cuda_mb is not None else "n/a (CPU)"
    val, test = r.metrics["val"], r.metrics["test"]
    val_loss = f"{r.train.val_loss:.4f}" if r.train.val_loss is not None else "n/a"
    lines = [
        f"# Fine-tuning report: {run_dir.name}",
        "",
        f"`{method.name}` ({method.description}) fine-tuning of the {family} model "
        f"`{cfg.model}` for `{cfg.task}` ({r.pooling} pooling). Written {time.strftime('%Y-%m-%d %H:%M:%S')} on "
        f"{platform.node() or 'this machine'} ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{str(dtype).removeprefix('torch.')}).",
        "",
        "## Result",
        "",
        "| | validation | test |",
        "|---|---|---|",
        f"| accuracy | {val.accuracy:.4f} | {test.accuracy:.4f} |",
        f"| macro F1 | {val.macro_f1:.4f} | {test.macro_f1:.4f} |",
        f"| examples | {val.count:,} | {test.count:,} |",
        "",
        f"Majority-class baseline (always `{splits.label_names[majority]}`): test accuracy "
        f"{baseline:.4f}. Per-class test F1: "
        + ", ".join(f"{n} {f:.3f}" for n, f in zip(splits.label_names, test.f1))
        + ".",
        "",
        "## Cost",
        "",
        "| | |",
        "|---|---|",
        f"| trainable parameters | {r.trainable_params:,} of {r.total_params:,} "
        f"({100 * r.trainable_params / max(r.total_params, 1):.3g}%) |",
        f"| steps | {r.train.steps:,} (batch {cfg.train.batch_size} x {cfg.train.grad_accum}) |",
        f"| final train loss | {r.train.train_loss:.4f} |",
        f"| validation loss | {val_loss} |",
        f"| wall time | {r.seconds:.1f} s (training {r.train.seconds:.1f} s, "
        f"features {r.feature_seconds:.1f} s) |",
        f"| peak memory | RSS {r.peak_rss_mb:,.0f} MiB; CUDA {cuda} |",
        f"| checkpoint size (trained weights) | {_human_bytes(r.checkpoint_bytes)} |",
        f"| classifier size (backbone + head) | {_human_bytes(r.classifier_bytes)} |",
        "",
        "![loss curve](loss.png)",
        "",
        "## Data",
        "",
        f"- source: {src.get('name')} (`{src.get('path')}`)"
        + (
            f", {src.get('package')}=={src.get('version')}, licence {src.get('licence')}"
            if src.get("package")
            else ""
        ),
        f"- {src.get('examples'):,} examples, split by seed {src.get('split_seed')}: "
        + ", ".join(f"{n:,} {s}" for s, n in src.get("sizes", {}).items()),
        f"- labels: {', '.join(splits.label_names)}; inputs truncated to "
        f"{r.max_length} tokens at most",
        "",
        "## Config",
        "",
        "```yaml",
        configlib.dump_yaml(cfg).rstrip(),
        "```",
        "",
    ]
    write_text_atomic(run_dir / "report.md", "\n".join(lines))
