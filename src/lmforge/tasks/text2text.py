"""`--task text2text`: text-to-text fine-tuning with task prefixes (Raffel et al., 2020, "Exploring
the Limits of Transfer Learning with a Unified Text-to-Text Transformer", T5).

Every example is an input text, the task prefix then the source ("summarize: ...", "translate
Shakespeare to modern English: ..."), and a target text (data/text2text.py: the two generated
Shakespeare sets, or a JSONL file of {"source", "target"} rows).

- t5 (encoder-decoder): the input goes into the encoder, the decoder is trained to produce the
  target with teacher forcing: it reads the target shifted right behind the start token and the
  loss is the cross-entropy of every target token and `</s>` (`seq2seq_loss`, train/span.py).
- gpt (decoder): the prompt (input + separator) and the target with the end token form one
  sequence; the causal-LM loss (`causal_lm_loss`, train/losses.py) counts the target and end
  tokens only (the prompt's labels are -100), as in instruction tuning.
- bert is refused: an encoder has no decoder to generate with.

Evaluation generates the outputs of the first `data.eval_examples` validation and test examples
(batched greedy decoding, or beam search with `data.num_beams` > 1 on t5: infer/seq2seq.py; the
KV-cached `Engine` of infer/engine.py for gpt) and scores them against the references
(eval/text2text.py: ROUGE-1/2/L, BLEU, chrF). The report sets them beside the "copy the source"
baseline. The fine-tuned model is saved as a plain model directory plus `text2text.json` (prefix,
framing, generation settings), so `lmforge generate --model RUN --prompt "summarize: ..."` runs it
(for gpt, `generate` reads text2text.json to add the separator and print only the target).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge.data.classification import pad_right
from lmforge.data.text2text import (
    AUTO_PREFIX,
    TEXT2TEXT_FILE,
    Framing,
    GenerationSettings,
    Text2TextBatches,
    load_pair_splits,
    make_framing,
    with_prefix,
)
from lmforge.device import autocast
from lmforge.errors import UserError
from lmforge.eval.text2text import Text2TextMetrics, text2text_metrics
from lmforge.fileio import write_json_atomic
from lmforge.infer.engine import Engine
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.seq2seq import beam_search, sample_ids
from lmforge.models import registry
from lmforge.models.loading import save_model
from lmforge.tasks.base import SplitDataConfig, Task, TaskSetup, table_cell
from lmforge.train.losses import causal_lm_loss, unwrap
from lmforge.train.span import seq2seq_loss

REPORT_EXAMPLES = 4
"""Test examples (source, reference, prediction) shown in the report."""


@dataclass
class Text2TextDataConfig(SplitDataConfig):
    source: str = "shakespeare-modern"
    """`shakespeare-modern`, `shakespeare-lead` or a .jsonl file of source/target rows (`--data`)."""
    source_field: str = "source"
    """JSONL key holding the source text."""
    target_field: str = "target"
    """JSONL key holding the target text."""
    prefix: str = AUTO_PREFIX
    """Task prefix put before every source, e.g. "summarize:" (auto: the built-in data's own,
    none for a file; "" = none)."""
    separator: str = "\n"
    """gpt: the text between the prompt (prefix + source) and the target."""
    max_target_tokens: int = 64
    """Longest target in tokens, the end token included (longer targets are cut)."""
    max_new_tokens: int = 0
    """Evaluation: most tokens generated per output (0 = max_target_tokens)."""
    num_beams: int = 1
    """Evaluation: 1 = greedy decoding, more = beam search (t5)."""
    length_penalty: float = 1.0
    """Evaluation, beam search: a hypothesis scores log p / length^length_penalty."""
    eval_examples: int = 200
    """Examples generated and scored per split, validation and test (0 = all)."""

    def __post_init__(self) -> None:
        if self.max_target_tokens < 2:
            raise ValueError("max_target_tokens must be at least 2 (a token and the end token)")
        if self.max_new_tokens < 0 or self.eval_examples < 0:
            raise ValueError("max_new_tokens and eval_examples must be >= 0")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")


class Text2TextTask(Task):
    name = "text2text"
    description = "text-to-text generation with a task prefix; ROUGE, BLEU and chrF"
    data_config = Text2TextDataConfig
    families = ("gpt", "t5")
    train_defaults = {"block_size": 256}

    def __init__(self) -> None:
        self._data_of: weakref.WeakKeyDictionary[nn.Module, Text2TextBatches] = (
            weakref.WeakKeyDictionary()
        )
        """Model -> the data `setup` built for it: `save` records its framing (the Task
        interface hands `save` the model alone)."""

    def check_family(self, family: str) -> None:
        if family not in self.families:
            raise UserError(
                f"task 'text2text' cannot fine-tune a {family} model: an encoder-only model "
                "cannot generate text; use a gpt or t5 model"
            )

    def setup(self, backbone, tokenizer, cfg) -> TaskSetup:
        """The pairs split and framed for the backbone's family; the model is the backbone."""
        d = cfg.data
        family = registry.family_of(backbone).name
        if family != "t5" and d.num_beams > 1:
            raise UserError("beam search (data.num_beams > 1) is for t5 models; use 1 for gpt")
        splits = load_pair_splits(
            d.source,
            source_field=d.source_field,
            target_field=d.target_field,
            seed=d.split_seed,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            train_subset=d.train_subset,
        )
        prefix = splits.prefix if d.prefix == AUTO_PREFIX else d.prefix.strip()
        max_length = min(cfg.train.block_size, backbone.config.max_seq_len)
        framing = make_framing(
            family, tokenizer, backbone.config, prefix, d.separator, max_length, d.max_target_tokens
        )
        generation = GenerationSettings(
            max_new_tokens=d.max_new_tokens or d.max_target_tokens,
            num_beams=d.num_beams,
            length_penalty=d.length_penalty,
            eval_examples=d.eval_examples,
        )
        data = Text2TextBatches.build(splits, tokenizer, framing, generation)
        self._data_of[backbone] = data
        about = f"prefix {prefix!r}" if prefix else "no prefix"
        return TaskSetup(backbone, data, splits, about)

    def loss(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        if registry.family_of(unwrap(model)).name == "t5":
            input_ids, attention_mask, labels = batch
            return seq2seq_loss(model, input_ids, labels, attention_mask)
        return causal_lm_loss(model, batch)

    def evaluate(self, model, data, split, device, dtype) -> Text2TextMetrics:
        """Scores of the generated outputs of the first `eval_examples` examples of `split`."""
        n = scored_count(data, split)
        predictions = generate_outputs(model, data, data.inputs[split][:n], device, dtype)
        return text2text_metrics(predictions, data.texts.targets[split][:n])

    def save(self, model, run_dir: Path, tokenizer, info: dict) -> tuple[str, ...]:
        """The model directory and text2text.json with the framing `setup` made for `model`."""
        save_run(model, self._data_of[model], run_dir, tokenizer, info)
        return ("model.safetensors",)

    def report(self, setup, metrics) -> list[str]:
        data: Text2TextBatches = setup.data
        val, test = metrics["val"], metrics["test"]
        texts = data.texts
        copy = text2text_metrics(
            texts.sources["test"][: test.count], texts.targets["test"][: test.count]
        )
        g = data.generation
        decoding = (
            "greedy decoding" if g.num_beams == 1 else f"beam search with {g.num_beams} beams"
        )
        rows = [
            ("ROUGE-1", "rouge1"),
            ("ROUGE-2", "rouge2"),
            ("ROUGE-L", "rouge_l"),
            ("BLEU", "bleu"),
            ("chrF", "chrf"),
        ]
        lines = [
            f"Outputs generated by {decoding} (at most {g.max_new_tokens} new tokens) for the "
            f"first {val.count:,} of {texts.size('val'):,} validation and {test.count:,} of "
            f"{texts.size('test'):,} test examples, scored against the references: ROUGE "
            "F-measure (rouge-score, stemmed; mean over examples), corpus BLEU and chrF "
            "(sacrebleu), all 0-100.",
            "",
            "| | validation | test | copy the source (test) |",
            "|---|---|---|---|",
            *(
                f"| {label} | {getattr(val, key):.2f} | {getattr(test, key):.2f} | "
                f"{getattr(copy, key):.2f} |"
                for label, key in rows
            ),
            f"| examples scored | {val.count:,} | {test.count:,} | {copy.count:,} |",
            "",
            "The copy baseline outputs each source unchanged (without the prefix). It is strong "
            "wherever the target shares most of its words with the source, as in both generated "
            "Shakespeare sets (a modernized line keeps every word but the archaic ones; a lead is "
            "the speech's first sentence): a model has learned the task when it beats the "
            "baseline, not merely when its scores are high.",
            "",
            "Test examples:",
            "",
            "| source | reference | prediction |",
            "|---|---|---|",
        ]
        for i in range(min(REPORT_EXAMPLES, test.count)):
            cells = (texts.sources["test"][i], texts.targets["test"][i], test.predictions[i])
            lines.append("| " + " | ".join(table_cell(c) for c in cells) + " |")
        return lines

    def describe_data(self, setup) -> list[str]:
        data: Text2TextBatches = setup.data
        f = data.framing
        cut_inputs, cut_targets = data.truncated.get("train", (0, 0))
        n = setup.examples.size("train")
        return [
            f"- task prefix: {f.prefix!r}" if f.prefix else "- no task prefix",
            f"- {f.describe()}",
            f"- at most {f.input_budget} input tokens and {f.max_target_tokens} target tokens "
            f"(end token included); cut to fit: {cut_inputs:,} of {n:,} training inputs, "
            f"{cut_targets:,} targets",
        ]


def scored_count(data: Text2TextBatches, split: str) -> int:
    """How many examples of `split` are generated and scored."""
    n = data.size(split)
    limit = data.generation.eval_examples
    return min(n, limit) if limit > 0 else n


# ----------------------------------------------------------------------------------- generation
@torch.no_grad()
def generate_outputs(
    model: nn.Module,
    data: Text2TextBatches,
    inputs: list[list[int]],
    device: torch.device,
    dtype: torch.dtype,
) -> list[str]:
    """The generated text of each framed input (encoder ids for t5, prompt ids for gpt).

    Inputs are batched in order of length, so a batch pads little; outputs go back in order."""
    g, framing = data.generation, data.framing
    was_training = model.training
    model.to(device).eval()
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    outputs: list[list[int]] = [[] for _ in inputs]
    for start in range(0, len(order), g.batch_size):
        index = order[start : start + g.batch_size]
        rows = [inputs[i] for i in index]
        with autocast(device, dtype):
            generated = generate_ids(model, framing, rows, g, device)
        for i, ids in zip(index, generated):
            outputs[i] = ids
    model.train(was_training)
    return [data.tokenizer.decode(ids, skip_special_tokens=True) for ids in outputs]


def generate_ids(
    model: nn.Module,
    framing: Framing,
    rows: list[list[int]],
    g: GenerationSettings,
    device: torch.device,
) -> list[list[int]]:
    """Generated ids (end token left out) of a batch of framed inputs: greedy decoding, or beam
    search on t5 when g.num_beams > 1."""
    params = SamplingParams(temperature=0.0, max_new_tokens=g.max_new_tokens)
    if framing.family == "t5":
        input_ids, mask = pad_right(rows, framing.pad_id)  # (B, S) each
        input_ids, mask = input_ids.to(device), mask.to(device).bool()
        if g.num_beams > 1:
            return beam_search(
                model,
                input_ids,
                mask,
                g.num_beams,
                params.max_new_tokens,
                framing.eos_id,
                g.length_penalty,
            )
        return sample_ids(model, input_ids, mask, params, framing.eos_id)
    generated = Engine(model).generate_ids(rows, params, {framing.eos_id})
    return [ids[:-1] if ids and ids[-1] == framing.eos_id else ids for ids in generated]


# ------------------------------------------------------------------ saving, `lmforge generate`
def save_run(model: nn.Module, data: Text2TextBatches, run_dir: Path, tokenizer, info: dict):
    """The fine-tuned model as a model directory, and text2text.json beside it."""
    save_model(model, run_dir, tokenizer)
    f, g = data.framing, data.generation
    meta = {
        "task": "text2text",
        "family": f.family,
        "prefix": f.prefix,
        "framing": f.describe(),
        "separator": f.separator,
        "max_length": f.max_length,
        "max_input_tokens": f.input_budget,
        "max_target_tokens": f.max_target_tokens,
        "generation": {
            "max_new_tokens": g.max_new_tokens,
            "num_beams": g.num_beams,
            "length_penalty": g.length_penalty,
        },
        "usage": f'lmforge generate --model RUN --prompt "{with_prefix(f.prefix, "<source>")}" '
        "--temperature 0",
        **info,
    }
    write_json_atomic(Path(run_dir) / TEXT2TEXT_FILE, meta)


def generate_framed(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    params: SamplingParams,
    info: dict,
    ignore_eos: bool = False,
    num_beams: int = 1,
) -> list[str]:
    """A fine-tuned text2text decoder's output for each prompt ("<prefix> <source>"), framed as in
    training: the prompt cut to its budget, the separator, then generation up to the end token.
    `info` is the run's text2text.json (`read_text2text_info`)."""
    if num_beams != 1:
        raise UserError("beam search (--num-beams) is for encoder-decoder (t5) models")
    framing = make_framing(
        "gpt",
        tokenizer,
        model.config,
        str(info.get("prefix", "")),
        str(info["separator"]),
        int(info["max_length"]),
        int(info["max_target_tokens"]),
    )
    ids = framing.encode_inputs(tokenizer, list(prompts))
    stop = set() if ignore_eos else {framing.eos_id}
    generated = Engine(model).generate_ids(ids, params, stop)
    return [
        tokenizer.decode(row[:-1] if row and row[-1] in stop else row, skip_special_tokens=True)
        for row in generated
    ]
