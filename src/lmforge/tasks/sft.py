"""`--task sft`: supervised instruction and chat fine-tuning of a decoder on conversations.

    lmforge finetune --model SmolLM2-135M-Instruct.Q4_1.gguf --method lora --task sft \
        --data instructions --out runs/sft
    lmforge chat --model runs/sft

The conversations (data/conversations.py: a JSONL file of {"messages": [...]}, the `chatterbot`
corpus, or the generated `instructions` set) are rendered with the model's chat template
(`data.template`: its own, else ChatML or plain text; tokenizer/chat.py), and the loss is the
causal-LM cross-entropy of the assistant's tokens alone, end-of-turn token included; with
`data.packing` several conversations share a row without attending to each other (data/sft.py).

Evaluation, on validation and test: the assistant-token loss and its perplexity over the whole
split, and exact match of the last answer of the first `data.eval_examples` conversations,
generated greedily from everything before it (eval/sft.py). With `data.baseline` (the default) the
starting model is scored the same way on the test split before training, so the report shows what
fine-tuning changed. The model is saved as a plain model directory whose tokenizer carries the
template it was trained with, so `lmforge chat --model RUN` talks to it as trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lmforge.data.conversations import load_conversation_splits
from lmforge.data.instructions import GENERATION_SEED
from lmforge.data.sft import SFTBatches
from lmforge.device import autocast, resolve_device, resolve_precision
from lmforge.errors import UserError
from lmforge.eval.sft import SFTMetrics, answer_scores
from lmforge.fileio import write_json_atomic
from lmforge.infer.generate import generate
from lmforge.infer.sampling import SamplingParams
from lmforge.models.loading import save_model
from lmforge.tasks.base import SplitDataConfig, Task, TaskSetup, table_cell
from lmforge.tokenizer.chat import get_chat_template
from lmforge.train.fused_ce import IGNORE_INDEX
from lmforge.train.losses import causal_lm_loss

SFT_FILE = "sft.json"
"""Beside a fine-tuned model's config.json: how it was instruction-tuned."""
REPORT_EXAMPLES = 6
EVAL_BATCH = 32


@dataclass
class SFTDataConfig(SplitDataConfig):
    source: str = "instructions"
    """`instructions` (generated, exact answers), `chatterbot`, or a .jsonl file of
    {"messages": [...]} rows (`--data`)."""
    messages_field: str = "messages"
    """JSONL key holding each conversation."""
    template: str = "auto"
    """Chat template: auto (the model's own, else default), model, default, chatml, plain, or a
    .jinja file."""
    packing: bool = False
    """Lay several training conversations in one row, with no attention between them."""
    examples: int = 4000
    """`instructions`: how many unique examples to generate."""
    generation_seed: int = GENERATION_SEED
    """`instructions`: the generator's seed (the split has its own, split_seed)."""
    max_new_tokens: int = 48
    """Exact match: most tokens generated per answer."""
    eval_examples: int = 200
    """Exact match: conversations scored per split, validation and test (0 = all)."""
    baseline: bool = True
    """Score the starting model on the test split before training (for the report)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.eval_examples < 0 or self.examples < 1:
            raise ValueError("eval_examples must be >= 0 and examples >= 1")


class SFTTask(Task):
    name = "sft"
    description = "instruction / chat fine-tuning on the assistant's turns; exact match"
    data_config = SFTDataConfig
    families = ("gpt",)
    train_defaults = {"block_size": 256, "batch_size": 16}

    def check_family(self, family: str) -> None:
        if family not in self.families:
            raise UserError(
                f"task 'sft' fine-tunes decoder (gpt) models with a chat template; {family} is "
                "not one (use text2text for t5)"
            )

    def setup(self, backbone, tokenizer, cfg) -> TaskSetup:
        d = cfg.data
        splits = load_conversation_splits(
            d.source,
            messages_field=d.messages_field,
            examples=d.examples,
            generation_seed=d.generation_seed,
            seed=d.split_seed,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            train_subset=d.train_subset,
        )
        template = get_chat_template(tokenizer, d.template)
        tokenizer.chat_template = template.source  # saved with the model: chat uses it as trained
        max_length = min(cfg.train.block_size, backbone.config.max_seq_len)
        if d.max_new_tokens >= max_length:
            raise UserError(
                f"data.max_new_tokens ({d.max_new_tokens}) leaves no room for a prompt in "
                f"{max_length} tokens; lower it or raise train.block_size"
            )
        pad_id = getattr(tokenizer, "pad_id", None) or 0
        data = SFTBatches.build(
            splits, template, pad_id, max_length, d.max_new_tokens, d.eval_examples, d.packing
        )
        if data.size("train") == 0:
            raise UserError("no training conversation has an assistant token within the length")
        if d.baseline:
            device = resolve_device(cfg.train.device)
            dtype = resolve_precision(cfg.train.precision, device)
            data.baseline = self.evaluate(backbone, data, "test", device, dtype, "baseline")
        about = f"chat template {d.template!r}"
        if data.packs is not None:
            about += (
                f", {len(data.rows['train']):,} conversations packed into {len(data.packs):,} rows"
            )
        return TaskSetup(backbone, data, splits, about)

    def loss(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        return causal_lm_loss(model, batch)

    def evaluate(
        self, model, data: SFTBatches, split, device, dtype, label: str = ""
    ) -> SFTMetrics:
        """The assistant-token loss over `split`, and exact match of its first answers."""
        loss, tokens = assistant_loss(model, data, split, device, dtype)
        n = data.scored(split)
        predictions = generate_answers(model, data, split, n, device, dtype, label or split)
        exact, contained, by_kind = answer_scores(
            predictions, [p.answer for p in data.prompts[split][:n]], data.kinds[split][:n]
        )
        return SFTMetrics(loss, tokens, exact, contained, n, predictions, by_kind)

    def save(self, model, run_dir: Path, tokenizer, info: dict) -> tuple[str, ...]:
        """The model directory (its tokenizer carries the template trained with) and sft.json."""
        save_model(model, run_dir, tokenizer)
        write_json_atomic(Path(run_dir) / SFT_FILE, {"task": "sft", **info})
        return ("model.safetensors",)

    def report(self, setup, metrics) -> list[str]:
        return sft_report(setup.data, metrics)

    def describe_data(self, setup) -> list[str]:
        data: SFTBatches = setup.data
        n = {s: len(data.rows[s]) for s in data.rows}
        lines = [
            f"- chat template: end of turn {', '.join(map(repr, data.template.end_of_turn)) or 'none'}"
            f"; loss on the assistant's tokens and end-of-turn only",
            f"- at most {data.max_length} tokens per conversation; cut to fit: "
            + ", ".join(f"{data.truncated[s]:,} of {n[s] + data.dropped[s]:,} {s}" for s in n),
            f"- exact-match prompts cut at their start to leave {data.max_new_tokens} tokens for "
            "the answer: "
            + ", ".join(f"{sum(p.cut for p in data.prompts[s]):,} {s}" for s in ("val", "test")),
        ]
        if any(data.dropped.values()):
            lines.append(
                "- dropped (no assistant token left after the cut): "
                + ", ".join(f"{data.dropped[s]:,} {s}" for s in n)
            )
        if data.packs is not None:
            used = sum(len(x) for x, _ in data.rows["train"])
            fill = used / (len(data.packs) * data.max_length)
            lines.append(
                f"- packed: {n['train']:,} training conversations in {len(data.packs):,} rows "
                f"of {data.max_length} tokens ({fill:.0%} filled), block-diagonal attention"
            )
        return lines


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def assistant_loss(
    model: nn.Module, data: SFTBatches, split: str, device: torch.device, dtype: torch.dtype
) -> tuple[float, int]:
    """(mean cross-entropy per assistant token over `split`, how many tokens)."""
    was_training = model.training
    model.to(device).eval()
    total, count = 0.0, 0
    for x, y in data.iter_eval_batches(split, EVAL_BATCH):
        n = int((y != IGNORE_INDEX).sum())
        if n == 0:
            continue
        with autocast(device, dtype):
            loss = causal_lm_loss(model, (x.to(device), y.to(device)))
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1), count


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    data: SFTBatches,
    split: str,
    n: int,
    device: torch.device,
    dtype: torch.dtype,
    label: str,
) -> list[str]:
    """Greedy answers to the first `n` prompts of `split`, batched by length, in order."""
    was_training = model.training
    model.to(device).eval()
    prompts = [p.ids for p in data.prompts[split][:n]]
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    answers = [""] * n
    params = SamplingParams(temperature=0.0, max_new_tokens=data.max_new_tokens)
    template = data.template
    batches = range(0, n, EVAL_BATCH)
    for start in tqdm(batches, desc=f"answers ({label})", unit="batch", disable=None):
        index = order[start : start + EVAL_BATCH]
        with autocast(device, dtype):
            texts = generate(
                model,
                template.tokenizer,
                [prompts[i] for i in index],
                params,
                stop=template.stop_strings,
                stop_token_ids=template.stop_token_ids,
            )
        for i, text in zip(index, texts):
            answers[i] = text
    model.train(was_training)
    return answers


# ---------------------------------------------------------------------------------------- report
def sft_report(data: SFTBatches, metrics: dict[str, SFTMetrics]) -> list[str]:
    """The report's result section: loss and exact match before and after, by kind, examples."""
    val, test, base = metrics["val"], metrics["test"], data.baseline
    columns = [("starting model, test", base)] if base is not None else []
    columns += [("fine-tuned, validation", val), ("fine-tuned, test", test)]
    rows = [
        ("assistant-token loss", lambda m: f"{m.loss:.4f}"),
        ("perplexity", lambda m: f"{m.perplexity:.2f}"),
        ("exact match", lambda m: f"{m.exact_match:.1%}"),
        ("answer contained", lambda m: f"{m.contains:.1%}"),
        ("answers scored", lambda m: f"{m.count:,}"),
        ("assistant tokens", lambda m: f"{m.tokens:,}"),
    ]
    lines = [
        "Answers generated greedily (at most "
        f"{data.max_new_tokens} new tokens) from each conversation's turns before its last "
        "answer; exact match after whitespace normalisation (case and punctuation count), "
        "answer contained: the reference appears in the answer. The loss is over every "
        "assistant token and end-of-turn token of the split.",
        "",
        "| | " + " | ".join(name for name, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
        *(f"| {label} | " + " | ".join(fmt(m) for _, m in columns) + " |" for label, fmt in rows),
    ]
    if test.by_kind:
        lines += ["", "Exact match on the test split by kind:", ""]
        lines += ["| kind | answers |" + (" starting model |" if base else "") + " fine-tuned |"]
        lines += ["|---|---|" + ("---|" if base else "") + "---|"]
        for kind, (em, count) in test.by_kind.items():
            before = f" {base.by_kind[kind][0]:.1%} |" if base else ""
            lines.append(f"| {kind} | {count:,} |{before} {em:.1%} |")
    lines += ["", "Test examples:", ""]
    header = "| request | reference |" + (" starting model |" if base else "") + " fine-tuned |"
    lines += [header, "|---|---|" + ("---|" if base else "") + "---|"]
    for i in range(min(REPORT_EXAMPLES, test.count)):
        prompt = data.prompts["test"][i]
        cells = [prompt.request, prompt.answer]
        cells += [base.predictions[i]] if base else []
        lines.append(
            "| " + " | ".join(table_cell(c, 120) for c in [*cells, test.predictions[i]]) + " |"
        )
    return lines
