"""`lmforge eval classify`: zero- or few-shot classification by prompting a decoder, no training.

    lmforge eval classify --model SmolLM2-135M-Instruct.Q4_1.gguf --data rotten-tomatoes --shots 4

The data and its split are those of `lmforge finetune --task classify` (same sources, same seeded
split), so the scores sit beside fine-tuned ones; the method is eval/prompting.py. Prints accuracy
and macro F1; with `--out DIR` also writes report.md and result.json (what `lmforge compare`
reads): accuracy, F1, parameters, peak memory, wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.device import resolve_device, resolve_precision
from lmforge.errors import UserError
from lmforge.eval.prompting import PromptClassifier, draw_demonstrations, prompt_format
from lmforge.fileio import write_json_atomic, write_text_atomic
from lmforge.models import registry
from lmforge.recipes.finetune import RESULT_FILE, load_backbone, peak_cuda_mb, peak_rss_mb
from lmforge.tasks.classify import ClassifyDataConfig, labelled_splits

__all__ = ["ClassifyDataConfig", "PromptClassifyConfig", "main"]


@dataclass
class PromptClassifyConfig:
    model: str
    """A decoder: lmforge or Hugging Face directory, or a GGUF file."""
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    """Source and split, as for `finetune --task classify`."""
    shots: int = 0
    """Demonstrations per prompt, drawn from the training split (0 = zero-shot)."""
    split: str = "test"
    limit: int = 0
    """Score only the first N examples of the split (0 = all)."""
    seed: int = 0
    """Seed of the demonstrations' draw."""
    instruction: str = ""
    """First line of the prompt (default: the data's own, or "Classify each text as ...")."""
    verbalizers: dict[str, str] = field(default_factory=dict)
    """Label -> the word that names it in the prompt (default: the label's name)."""
    max_text_tokens: int = 96
    device: str = "auto"
    precision: str = "auto"
    out: str | None = None
    """A directory for report.md and result.json."""
    progress: bool = True


def main(cfg: PromptClassifyConfig) -> dict:
    started = time.perf_counter()
    if cfg.split not in ("train", "val", "test"):
        raise UserError(f"--split must be train, val or test, got {cfg.split!r}")
    model, tokenizer = load_backbone(cfg.model)
    family = registry.family_of(model).name
    if family != "gpt":
        raise UserError(f"prompting needs a decoder (gpt) model; {cfg.model} is a {family} model")
    d = cfg.data
    splits = labelled_splits(d)
    fmt = prompt_format(
        splits.label_names,
        cfg.shots,
        d.source,
        cfg.instruction,
        cfg.verbalizers,
        cfg.seed,
        cfg.max_text_tokens,
    )
    demos = draw_demonstrations(splits, cfg.shots, cfg.seed)
    classifier = PromptClassifier(model, tokenizer, fmt, demos)
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    metrics = classifier.evaluate(splits, cfg.split, device, dtype, cfg.limit, cfg.progress)
    name = "zero-shot" if cfg.shots == 0 else f"{cfg.shots}-shot"
    result = {
        "method": name,
        f"{cfg.split}_accuracy": metrics.accuracy,
        f"{cfg.split}_macro_f1": metrics.macro_f1,
        "examples": metrics.count,
        "trainable_params": 0,
        "total_params": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": peak_cuda_mb(device),
        "seconds": time.perf_counter() - started,
        "checkpoint_bytes": 0,
    }
    print(
        f"{name} prompting of {cfg.model} on {splits.source.get('name')} {cfg.split} "
        f"({metrics.count:,} examples): {metrics.summary()}"
    )
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RESULT_FILE, result)
        report = _report(cfg, classifier, metrics, result, splits.label_names)
        write_text_atomic(out / "report.md", report)
    return result


def _report(
    cfg: PromptClassifyConfig, classifier: PromptClassifier, metrics, result, labels: list[str]
) -> str:
    example = classifier.prompt("<the text>")
    return "\n".join(
        [
            f"# Prompting report: {result['method']}",
            "",
            f"`{cfg.model}` classifies `{cfg.data.source}` ({cfg.split} split, "
            f"{metrics.count:,} examples) by the likelihood of each label's word after the "
            "prompt (eval/prompting.py); no parameter is trained.",
            "",
            "| | |",
            "|---|---|",
            f"| accuracy | {metrics.accuracy:.4f} |",
            f"| macro F1 | {metrics.macro_f1:.4f} |",
            f"| confusion (rows true, columns predicted) | {metrics.confusion} |",
            f"| wall time | {result['seconds']:.1f} s |",
            f"| peak RSS | {result['peak_rss_mb']:,.0f} MiB |",
            *(
                [f"| peak CUDA memory | {result['peak_cuda_mb']:,.0f} MiB |"]
                if result["peak_cuda_mb"] is not None
                else []
            ),
            "",
            "The prompt:",
            "",
            "```",
            example,
            "```",
            "",
            "Verbalizers: "
            + ", ".join(f"{n} -> {v!r}" for n, v in zip(labels, classifier.fmt.verbalizers)),
            "",
        ]
    )
