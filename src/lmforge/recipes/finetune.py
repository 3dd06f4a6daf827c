"""`lmforge finetune`: adapt a pre-trained model to a task with a method, on the shared training loop.

    lmforge finetune --model runs/quickstart --method full --task classify \
        --data rotten-tomatoes --out runs/rt-full [--train.max_steps=300 --data.train_subset=2000]
    lmforge finetune --model runs/bert --method feature --task classify --data reviews.jsonl \
        --out runs/reviews-feature
    lmforge finetune --model runs/bert --task tag --data ner.conll --out runs/ner
    lmforge finetune --model runs/t5 --task text2text --data shakespeare-lead --out runs/lead
    lmforge finetune --model smollm2.gguf --method qlora --data rotten-tomatoes --out runs/rt-qlora
    lmforge finetune --model runs/quickstart --method adapter --adapter.bottleneck=16 --out runs/a
    lmforge finetune --model runs/quickstart --method prompt --prompt.num_tokens=20 --out runs/p

The pieces, each chosen from a dict by name:
    model   any family (gpt, bert, t5), any format `lmforge convert` reads (lmforge directory,
            Hugging Face directory, GGUF file), with its tokenizer
    task    supplies the data, the head, the loss, the metrics, the saved model and its part
            of the report (tasks/: `TASKS`, each a `tasks.base.Task`)
    method  prepares the model in place: freezing, wrapping or replacing modules
            (peft/methods.py: `full`, `feature`, `lora`, `qlora`, `adapter`, `prompt`)
and train/loop.py trains whatever is trainable (schedule, accumulation, clipping, checkpoints,
resume, metrics.jsonl, progress). With the feature method, a task that can (classify) runs the
frozen backbone once over every example and trains the head alone on the cached features.

The run directory holds config.yaml, metrics.jsonl (training records, then the final validation and
test metrics), checkpoints/, loss.png, report.md (the task's scores; method, trainable / total
parameters, peak memory, wall time, checkpoint size) and the fine-tuned model as the task saves it:
for classify the backbone as a model directory (config.json, model.safetensors, tokenizer.json)
plus head.safetensors and classifier.json, which `lmforge classify --model RUN --text ...` and
`recipes/classify.py` `load_classifier(RUN)(texts)` use. A parameter-efficient method also writes
what it trained alone, adapter.safetensors + adapter.json (peft/adapter_files.py): LoRA and QLoRA
runs save their model merged, adapter and prompt runs the base with the adapter beside it, which
loading rebuilds. Single process (no torchrun) for now.
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
from lmforge.data.classification import SPLITS
from lmforge.device import resolve_device, resolve_precision
from lmforge.errors import UserError
from lmforge.eval.forgetting import load_corpus, original_perplexity
from lmforge.fileio import write_json_atomic, write_text_atomic
from lmforge.models import registry
from lmforge.models.loading import check_vocab
from lmforge.peft import Method, get_method, save_adapter
from lmforge.peft.lora import BLOCK_LINEARS
from lmforge.peft.methods import backbone_of
from lmforge.peft.nf4 import count_weights, weight_bytes
from lmforge.peft.standardize import fold_standardized_head
from lmforge.tasks import ClassifyDataConfig, Task, TaskSetup, get_task
from lmforge.tasks.base import Metrics
from lmforge.train import checkpoint as ckpt
from lmforge.train.loop import TrainConfig, TrainResult, train
from lmforge.train.metrics import MetricsLog, plot_loss_curves
from lmforge.train.replay import ReplayBatches, replay_objective


@dataclass
class HeadConfig:
    dropout: float = 0.1
    """Dropout on the pooled features before the classification layer."""
    pooling: str = "auto"
    """classify: how hidden states become one vector: auto (gpt last token, bert cls, t5 mean),
    last, mean or cls (models/heads.py)."""


@dataclass
class LoRAConfig:
    """The `lora` method's adapters (peft/lora.py)."""

    rank: int = 8
    """r: the rank of each update B A."""
    alpha: float = 16.0
    """The update is scaled by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the adapters' input."""
    targets: list[str] = field(default_factory=lambda: list(BLOCK_LINEARS))
    """Linear layers to adapt, by name or glob (`q_proj`, `attn.*_proj`, `layers.1.*`); by default
    every linear layer of the blocks, which QLoRA (Dettmers et al., 2023, sec. 4) found needed to
    match full fine-tuning (the LoRA paper's `q_proj,v_proj` trains fewer)."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("lora.targets must name at least one layer (e.g. q_proj)")


@dataclass
class QLoRAConfig:
    """The `qlora` method's base (peft/nf4.py, qlora.py); its adapters are the `lora` section's."""

    double_quant: bool = True
    """Quantize the NF4 block scales too (8-bit, in blocks of 256): ~0.37 bits less a weight."""


@dataclass
class AdapterConfig:
    """The `adapter` method's bottleneck adapters (peft/bottleneck.py, Houlsby et al., 2019)."""

    bottleneck: int = 64
    """m: the features between the down- and up-projection of each adapter."""
    layers: list[int] = field(default_factory=list)
    """Layer numbers that get adapters (empty: every layer)."""
    train_norms: bool = True
    """Train the layer norms too, as Houlsby et al. do."""

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise ValueError(f"adapter.bottleneck must be at least 1, got {self.bottleneck}")
        if any(i < 0 for i in self.layers):
            raise ValueError(f"adapter.layers must be layer numbers >= 0, got {self.layers}")


@dataclass
class PromptConfig:
    """The `prompt` method's soft prompt (peft/prompt.py, Lester et al., 2021)."""

    num_tokens: int = 20
    """P: the virtual tokens put before every input."""
    init: str = "vocab"
    """Initial embeddings: `vocab` (random tokens among the 5,000 commonest) or `text`."""
    text: str = ""
    """With init=text: the text whose tokens' embeddings (repeated) start the prompt."""

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"prompt.num_tokens must be at least 1, got {self.num_tokens}")
        if self.init not in ("vocab", "text"):
            raise ValueError(f"prompt.init must be vocab or text, got {self.init!r}")
        if self.init == "text" and not self.text.strip():
            raise ValueError("prompt.init=text needs prompt.text")


@dataclass
class ReplayConfig:
    """Replay of original-domain text during fine-tuning, against forgetting (train/replay.py)."""

    alpha: float = 0.0
    """Weight of the original-domain loss: L = alpha L_original + (1 - alpha) L_new (0 = off)."""
    corpus: str = "shakespeare"
    """The original-domain text replayed: shakespeare, chatterbot or text files
    (eval/forgetting.py)."""
    batch_size: int = 8
    """Windows of original text per step."""
    block_size: int = 128
    """Tokens per window."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"replay.alpha must be in [0, 1), got {self.alpha}")
        if self.batch_size < 1 or self.block_size < 2:
            raise ValueError("replay.batch_size must be >= 1 and replay.block_size >= 2")


@dataclass
class ForgettingConfig:
    """The original ability measured before and after fine-tuning (eval/forgetting.py)."""

    measure: bool = False
    """Perplexity of the model on held-out original-domain text, before and after."""
    corpora: list[str] = field(default_factory=lambda: ["shakespeare", "chatterbot"])
    tokens: int = 16384
    """Held-out tokens scored per corpus."""
    context: int = 256
    """Window of the perplexity (disjoint windows)."""


@dataclass
class FinetuneConfig:
    model: str = ""
    """Pre-trained model: lmforge or Hugging Face directory, or a GGUF file (`--model`)."""
    method: str = "full"
    """Fine-tuning method, from peft/methods.py METHODS (`--method`)."""
    task: str = "classify"
    """Task, from tasks/__init__.py TASKS (`--task`)."""
    data: object = field(default_factory=ClassifyDataConfig)
    """The task's own data section (its `data_config` dataclass, e.g. tasks/classify.py)."""
    head: HeadConfig = field(default_factory=HeadConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    qlora: QLoRAConfig = field(default_factory=QLoRAConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
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
"""Train-section defaults of a fine-tuning run; the task's, then the method's (peft/methods.py)
go on top."""


@dataclass
class FinetuneResult:
    train: TrainResult
    metrics: dict[str, Metrics]
    """`val` and `test`."""
    trainable_params: int
    total_params: int
    seconds: float
    """Wall time of the whole run (loading, features, training, evaluation, saving)."""
    feature_seconds: float
    peak_rss_mb: float
    peak_cuda_mb: float | None
    loaded_rss_mb: float
    """Peak resident memory once the model was loaded and prepared, before training."""
    trained_rss_mb: float
    """Peak resident memory through training and evaluation, before the model is saved (saving
    a merged or dequantized model can take more)."""
    weight_bytes: int
    """Bytes the prepared model's parameters take in memory (an NF4 base: packed and scales)."""
    weight_fp32_bytes: int
    """What they would take in fp32."""
    checkpoint_bytes: int
    """Size of the weights a training checkpoint stores (what the method trains)."""
    adapter_bytes: int
    """Size of adapter.safetensors, what a parameter-efficient method saves alone (0: none)."""
    saved_bytes: int
    """Size of the saved model's weights (backbone and any head)."""
    max_length: int
    """The longest input in tokens (train.block_size, at most the model's context)."""
    original_perplexity: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Corpus -> (perplexity before, after) with `forgetting.measure`."""

    def summary(self, method: str, replay_alpha: float) -> dict:
        """The flat record of result.json: scores, cost and forgetting (`lmforge compare` and
        `lmforge forgetting` read it)."""
        record: dict = {"method": method, "replay_alpha": replay_alpha, "steps": self.train.steps}
        for split, m in self.metrics.items():
            record.update(m.as_dict(f"{split}_"))
        record.update(
            trainable_params=self.trainable_params,
            total_params=self.total_params,
            seconds=self.seconds,
            peak_rss_mb=self.peak_rss_mb,
            peak_cuda_mb=self.peak_cuda_mb,
            weight_bytes=self.weight_bytes,
            checkpoint_bytes=self.checkpoint_bytes,
            adapter_bytes=self.adapter_bytes,
        )
        for corpus, (before, after) in self.original_perplexity.items():
            record[f"{corpus}_ppl_before"], record[f"{corpus}_ppl_after"] = before, after
        return record


# -------------------------------------------------------------------------------------- config
def build_config(raw: dict) -> FinetuneConfig:
    """A FinetuneConfig from a nested mapping: TRAIN_DEFAULTS, the task's and the method's
    defaults, then `raw`; the data section is the task's own dataclass."""
    raw = dict(raw)
    method = get_method(str(raw.get("method") or "full"))
    task = get_task(str(raw.get("task") or "classify"))
    given = dict(raw.get("train") or {})
    train_raw = {
        **TRAIN_DEFAULTS,
        **task.train_defaults,
        **method.train_defaults,
        **given,
        "objective": task.name,
    }
    if "lr" in given and "min_lr" not in given:  # keep the cosine's floor below a lowered peak
        train_raw["min_lr"] = _as_float(given["lr"], "train.lr") / 10
    raw["train"] = train_raw
    data = configlib.build(task.data_config, raw.pop("data", None), "data.")
    cfg = configlib.build(FinetuneConfig, raw)
    cfg.data = data
    return cfg


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


RESULT_FILE = "result.json"
"""The run's scores and cost as one flat JSON object (`FinetuneResult.summary`)."""


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
    backbone, tokenizer = load_backbone(cfg.model, cfg, method.load)
    family = registry.family_of(backbone).name
    task.check_family(family)
    setup = task.setup(backbone, tokenizer, cfg)
    model = method.prepare(setup.model, cfg, tokenizer)  # the same model, or a wrapper around it
    setup = replace(setup, model=model)
    examples = setup.examples
    context = getattr(backbone_of(model).config, "max_seq_len", None)  # a soft prompt takes some
    if context is not None and setup.data.max_length > context:
        raise UserError(
            f"inputs of up to {setup.data.max_length} tokens do not fit the {context} positions "
            f"the {method.name} method leaves of the model's context; lower train.block_size "
            f"to {context}"
        )
    corpora = original_corpora(cfg, tokenizer, family, method)  # replay, forgetting.measure
    trainable, total = count_weights(model)
    in_memory, in_fp32 = weight_bytes(model)
    loaded_rss = peak_rss_mb()
    device = resolve_device(cfg.train.device)
    dtype = resolve_precision(cfg.train.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", configlib.dump_yaml(cfg))
    sizes = ", ".join(f"{examples.size(s):,} {s}" for s in SPLITS)
    print(
        f"{family} model {cfg.model}: {trainable:,} of {total:,} parameters trainable "
        f"({method.name}); data {examples.source.get('name')}: {sizes} examples, "
        f"{setup.about}; device {device.type}, {str(dtype).removeprefix('torch.')}"
    )

    feature_seconds = 0.0
    train_model: nn.Module = model
    eval_data = setup.data
    if method.cached_features:
        t0 = time.perf_counter()
        cached = task.cache_features(setup, device, dtype, show_progress)
        if cached is not None:  # else the frozen backbone runs at every step
            train_model, eval_data = cached
        feature_seconds = time.perf_counter() - t0
    perplexity_before = measure_original(cfg, model, tokenizer, corpora, device)
    objective, train_data = task.loss, eval_data
    if cfg.replay.alpha > 0:
        objective = replay_objective(task.loss, cfg.replay.alpha)
        original = corpora[cfg.replay.corpus].token_data(backbone_of(model).config.vocab_size)
        if original.num_tokens("val") <= cfg.replay.block_size:
            raise UserError(
                f"replay corpus {cfg.replay.corpus} is too short for windows of "
                f"{cfg.replay.block_size} tokens; lower replay.block_size or add text"
            )
        train_data = ReplayBatches(
            eval_data, original, cfg.replay.batch_size, cfg.replay.block_size
        )
    max_length = setup.data.max_length
    train_cfg = replace(cfg.train, block_size=max_length)
    result = train(
        train_model,
        objective,
        train_data,
        train_cfg,
        run_dir,
        resume=resume,
        show_progress=show_progress,
    )

    metrics = {s: task.evaluate(train_model, eval_data, s, device, dtype) for s in ("val", "test")}
    fold_standardized_head(model)  # the plain head again, reading raw features
    perplexity_after = measure_original(cfg, model, tokenizer, corpora, device)
    final = {"step": result.steps}
    for split, m in metrics.items():
        final.update(m.as_dict(f"{split}_"))
    for corpus, after in perplexity_after.items():
        final[f"{corpus}_ppl_after"] = after
    MetricsLog(run_dir / "metrics.jsonl", resume_step=result.steps).log(final)

    trained_rss = peak_rss_mb()
    model.to("cpu").eval()
    if method.adapter_settings is not None:  # what the method trained, alone
        settings = {**method.adapter_settings(cfg), "base_model": str(cfg.model)}
        save_adapter(backbone_of(model), run_dir, settings, method.name)
    if method.finalize is not None:
        model = method.finalize(model)
    info = {
        "method": method.name,
        "base_model": str(cfg.model),
        "max_length": max_length,
        "data": examples.source.get("name"),
    }
    weights = task.save(model, run_dir, tokenizer, info)
    plot_loss_curves(run_dir / "metrics.jsonl", run_dir / "loss.png", title=run_dir.name)
    latest = ckpt.latest_checkpoint(run_dir)
    out_result = FinetuneResult(
        train=result,
        metrics=metrics,
        trainable_params=trainable,
        total_params=total,
        seconds=time.perf_counter() - started,
        feature_seconds=feature_seconds,
        peak_rss_mb=peak_rss_mb(),
        peak_cuda_mb=peak_cuda_mb(device),
        loaded_rss_mb=loaded_rss,
        trained_rss_mb=trained_rss,
        weight_bytes=in_memory,
        weight_fp32_bytes=in_fp32,
        checkpoint_bytes=_size(latest / "model.safetensors") if latest else 0,
        adapter_bytes=_size(run_dir / "adapter.safetensors") if method.adapter_settings else 0,
        saved_bytes=sum(_size(run_dir / w) for w in weights),
        max_length=max_length,
        original_perplexity={
            c: (perplexity_before[c], perplexity_after[c]) for c in perplexity_after
        },
    )
    write_report(run_dir, cfg, method, task, family, setup, out_result, dtype)
    write_json_atomic(run_dir / RESULT_FILE, out_result.summary(method.name, cfg.replay.alpha))
    print(
        f"done: {result.steps} steps, val {metrics['val'].summary()}, "
        f"test {metrics['test'].summary()} -> {run_dir}"
    )
    return out_result


def original_corpora(cfg: FinetuneConfig, tokenizer, family: str, method: Method) -> dict:
    """Name -> the original-domain corpora that replay and the forgetting measure need."""
    names = list(cfg.forgetting.corpora) if cfg.forgetting.measure else []
    if cfg.replay.alpha > 0:
        if method.cached_features:
            raise UserError("replay needs a backbone that trains; the feature method freezes it")
        names.append(cfg.replay.corpus)
    if names and family != "gpt":
        raise UserError(f"replay and forgetting.measure need a decoder (gpt); this is {family}")
    return {name: load_corpus(name, tokenizer) for name in dict.fromkeys(names)}


def measure_original(
    cfg: FinetuneConfig, model: nn.Module, tokenizer, corpora: dict, device: torch.device
) -> dict[str, float]:
    """Corpus -> perplexity of the task model's backbone on held-out original-domain text."""
    if not cfg.forgetting.measure:
        return {}
    f = cfg.forgetting
    chosen = [corpora[name] for name in dict.fromkeys(f.corpora)]
    return original_perplexity(
        backbone_of(model), tokenizer, chosen, f.tokens, f.context, device, cfg.train.precision
    )


def load_backbone(
    source: str | Path, cfg: FinetuneConfig | None = None, loader: Callable | None = None
):
    """(model, tokenizer) from any format `lmforge convert` reads, or by the method's own
    `loader(source, cfg)` (QLoRA); the tokenizer is required."""
    from lmforge.recipes.convert import load_any

    if not Path(source).exists():
        raise UserError(f"model not found: {source}; pass a model or run directory (or GGUF file)")
    if loader is not None:
        model, tokenizer = loader(str(source), cfg)
    else:
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


def peak_cuda_mb(device: torch.device) -> float | None:
    """Peak CUDA memory this process allocated on `device`, in MiB (None off cuda)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _human_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _weights(stored: int, fp32: int) -> str:
    """The weights' bytes, and what fp32 would take where they are stored otherwise (NF4)."""
    if stored == fp32:
        return _human_bytes(stored)
    return f"{_human_bytes(stored)} (all in fp32: {_human_bytes(fp32)})"


# ------------------------------------------------------------------------------------- report
def write_report(
    run_dir: Path,
    cfg: FinetuneConfig,
    method: Method,
    task: Task,
    family: str,
    setup: TaskSetup,
    r: FinetuneResult,
    dtype: torch.dtype,
) -> None:
    src = setup.examples.source
    cuda = f"{r.peak_cuda_mb:,.0f} MiB" if r.peak_cuda_mb is not None else "n/a (CPU)"
    val_loss = f"{r.train.val_loss:.4f}" if r.train.val_loss is not None else "n/a"
    lines = [
        f"# Fine-tuning report: {run_dir.name}",
        "",
        f"`{method.name}` ({method.description}) fine-tuning of the {family} model "
        f"`{cfg.model}` for `{task.name}` ({task.description}). Written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node() or 'this machine'} "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {str(dtype).removeprefix('torch.')}).",
        "",
        "## Result",
        "",
        *task.report(setup, r.metrics),
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
        f"| peak RSS: model loaded / through training and evaluation | "
        f"{r.loaded_rss_mb:,.0f} MiB / {r.trained_rss_mb:,.0f} MiB |",
        f"| model weights in memory | {_weights(r.weight_bytes, r.weight_fp32_bytes)} |",
        f"| checkpoint size (trained weights) | {_human_bytes(r.checkpoint_bytes)} |",
        *(
            [f"| adapter size (adapter.safetensors) | {_human_bytes(r.adapter_bytes)} |"]
            if r.adapter_bytes
            else []
        ),
        f"| saved model size | {_human_bytes(r.saved_bytes)} |",
        "",
        "![loss curve](loss.png)",
        "",
        *forgetting_section(cfg, r),
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
        *task.describe_data(setup),
        "",
        "## Config",
        "",
        "```yaml",
        configlib.dump_yaml(cfg).rstrip(),
        "```",
        "",
    ]
    write_text_atomic(run_dir / "report.md", "\n".join(lines))


def forgetting_section(cfg: FinetuneConfig, r: FinetuneResult) -> list[str]:
    """The report's "Original ability" section: perplexity before and after, and the replay."""
    if not r.original_perplexity and cfg.replay.alpha == 0:
        return []
    rp = cfg.replay
    lines = ["## Original ability", ""]
    if rp.alpha > 0:
        lines += [
            f"Replay: every step also trained on {rp.batch_size} windows of {rp.block_size} tokens "
            f"of `{rp.corpus}`, loss = {rp.alpha} x L_original + {1 - rp.alpha:g} x L_new.",
            "",
        ]
    if r.original_perplexity:
        lines += [
            f"Perplexity on {cfg.forgetting.tokens:,} held-out tokens of each original-domain "
            f"corpus (disjoint windows of {cfg.forgetting.context}; eval/forgetting.py):",
            "",
            "| corpus | before | after | change |",
            "|---|---|---|---|",
            *(
                f"| {c} | {b:.3f} | {a:.3f} | {100 * (a / b - 1):+.1f}% |"
                for c, (b, a) in r.original_perplexity.items()
            ),
            "",
        ]
    return lines
