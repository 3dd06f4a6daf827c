"""`--task tag`: token classification with BIO tags (named entities), on any family.

Data (data/tagging.py): `shakespeare-names` (built in: silver-standard PER/LOC entities in
Shakespeare's dialogue) or a JSONL / CoNLL file of tagged words, split by a seed; each word is
tokenized on its own and its tag sits on its first sub-word, every other position is ignored
(Devlin et al., 2019, section 5.3). The head (models/token_heads.py): dropout and one linear layer
on every token's final hidden state (BERT's encoder, GPT's causal decoder, T5's encoder). The loss:
cross-entropy over the tags at the first sub-words, averaged over those words. The metrics
(eval/tagging.py): entity-level precision / recall / micro F1 by seqeval, per entity type, and
token accuracy, on the words that fit `train.block_size`.

The feature method runs the frozen backbone once and caches, for every sentence, the final hidden
states at its words' first sub-words (`cache_word_features`): the head then trains on those word
vectors alone, exactly what it would see on top of the frozen backbone. The result is saved as a
tagger directory that `lmforge tag` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmforge.data.classification import FRAMINGS, pad_right
from lmforge.data.tagging import (
    IGNORE_INDEX,
    OUTSIDE,
    SPLITS,
    TagBatches,
    WordFeatureBatches,
    entity_type,
    load_tagged_splits,
)
from lmforge.device import autocast
from lmforge.errors import UserError
from lmforge.eval.tagging import TaggingMetrics, entity_spans, predict_tags, tagging_metrics
from lmforge.models import registry
from lmforge.models.token_heads import TokenClassifier, save_tagger
from lmforge.tasks.base import SplitDataConfig, Task, TaskSetup

EXAMPLES_SHOWN = 2
"""Test sentences shown in the report: this many tagged right and this many with a mistake."""


@dataclass
class TagDataConfig(SplitDataConfig):
    source: str = "shakespeare-names"
    """`shakespeare-names`, or a .jsonl / .conll (.txt) file of tagged words (`--data`)."""
    tokens_field: str = "tokens"
    """JSONL field holding the list of words."""
    tags_field: str = "tags"
    """JSONL field holding the list of tags (one per word)."""
    tags: list[str] = field(default_factory=list)
    """The tag set in index order (default: O, then the data's tags sorted)."""


def tagging_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean cross-entropy of the tags over the labelled positions: the last tensor of the batch
    holds a tag index per position (-100 = not a word's first sub-word), the others are the
    model's inputs (input_ids, attention_mask) or cached word features."""
    *inputs, labels = batch
    logits = model(*inputs)  # (B, T, num_tags), or (N, num_tags) on word features
    logits = logits.float().reshape(-1, logits.size(-1))  # (B * T, num_tags)
    labels = labels.reshape(-1)  # (B * T,)
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


@torch.no_grad()
def cache_word_features(
    model: TokenClassifier,
    data: TagBatches,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 64,
    show_progress: bool = True,
) -> WordFeatureBatches:
    """The frozen backbone's final hidden states at each sentence's words' first sub-words, for
    every split, computed once (fp32, on the CPU). Sentences run in order of length, so each
    batch pads little."""
    model.to(device).eval()
    total = sum(-(-data.size(s) // batch_size) for s in SPLITS)
    bar = tqdm(total=total, desc="features", unit="batch", disable=not show_progress)
    features: dict[str, list[torch.Tensor]] = {}
    for split in SPLITS:
        rows = data.encoded[split]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
        out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            ids, mask = pad_right([rows[i].ids for i in index], data.pad_id)  # (B, T) each
            with autocast(device, dtype):
                hidden = model.hidden_states(ids.to(device), mask.to(device))  # (B, T, C)
            for b, i in enumerate(index):
                out[i] = hidden[b, rows[i].positions].float().cpu()  # (words kept, C)
            bar.update(1)
        features[split] = out
    bar.close()
    return WordFeatureBatches(features, data)


def bracketed(words: list[str], tags: list[str]) -> str:
    """`[Hamlet]PER loves [Ophelia]PER .`: the words with each entity span bracketed."""
    starts: set[int] = set()
    ends: dict[int, str] = {}
    for kind, first, last in entity_spans(tags):
        starts.add(first)
        ends[last] = kind
    out = []
    for i, word in enumerate(words[: len(tags)]):
        out.append(("[" if i in starts else "") + word + (f"]{ends[i]}" if i in ends else ""))
    return " ".join(out)


class TagTask(Task):
    name = "tag"
    description = "token classification (BIO tags): a head on every token; entity F1 (seqeval)"
    data_config = TagDataConfig

    def setup(self, backbone, tokenizer, cfg) -> TaskSetup:
        """The sentences split and tokenized word by word as the backbone's family frames text,
        and a per-token head with one output per tag."""
        if cfg.head.pooling != "auto":
            raise UserError("head.pooling is for --task classify; a tagger reads every token")
        d = cfg.data
        splits = load_tagged_splits(
            d.source,
            tokens_field=d.tokens_field,
            tags_field=d.tags_field,
            tags=d.tags,
            seed=d.split_seed,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
            train_subset=d.train_subset,
        )
        family = registry.family_of(backbone).name
        framing = FRAMINGS[family](tokenizer, backbone.config)
        max_length = min(cfg.train.block_size, backbone.config.max_seq_len)  # longer ones are cut
        data = TagBatches.from_splits(splits, tokenizer, framing, max_length)
        torch.manual_seed(cfg.train.seed)  # the head's initialisation
        names = splits.tag_names
        model = TokenClassifier(backbone, len(names), cfg.head.dropout, names)
        types = sorted({entity_type(t) for t in names if t != OUTSIDE})
        return TaskSetup(model, data, splits, f"{len(names)} tags ({', '.join(types)})")

    def loss(self, model, batch):
        return tagging_loss(model, batch)

    def evaluate(self, model, data, split, device, dtype) -> TaggingMetrics:
        """Entity and token scores of `model` (tagger, or head on cached word features)."""
        predicted = predict_tags(model, data, split, 64, device, dtype)
        names = data.tag_names
        gold = [tags[:kept] for tags, kept in zip(data.tags[split], data.kept[split])]
        return tagging_metrics(
            [[names[t] for t in row] for row in gold],
            [[names[t] for t in row] for row in predicted],
            data.truncated_words(split),
        )

    def cache_features(self, setup, device, dtype, show_progress):
        from lmforge.peft import StandardizedHead

        features = cache_word_features(
            setup.model, setup.data, device, dtype, show_progress=show_progress
        )
        words = torch.cat(features.features["train"])  # (words of the training split, C)
        setup.model.head = StandardizedHead(setup.model.head, words)
        return setup.model.head, features

    def save(self, model, run_dir: Path, tokenizer, info: dict) -> tuple[str, ...]:
        save_tagger(model, run_dir, tokenizer, info)
        return ("model.safetensors", "head.safetensors")

    def report(self, setup, metrics) -> list[str]:
        val, test = metrics["val"], metrics["test"]
        data, splits = setup.data, setup.examples
        outside = data.tag_names.index(OUTSIDE)
        gold_test = [t[:k] for t, k in zip(data.tags["test"], data.kept["test"])]
        o_share = sum(t == outside for row in gold_test for t in row) / max(test.words, 1)
        lines = [
            "| | validation | test |",
            "|---|---|---|",
            f"| entity precision | {val.precision:.4f} | {test.precision:.4f} |",
            f"| entity recall | {val.recall:.4f} | {test.recall:.4f} |",
            f"| entity F1 (micro) | {val.f1:.4f} | {test.f1:.4f} |",
            f"| token accuracy | {val.accuracy:.4f} | {test.accuracy:.4f} |",
            f"| sentences | {val.sentences:,} | {test.sentences:,} |",
            f"| words scored | {val.words:,} | {test.words:,} |",
            f"| words truncated (not scored) | {val.truncated_words:,} | "
            f"{test.truncated_words:,} |",
            "",
            "Entity scores by seqeval (exact type and span, CoNLL reading of BIO spans); words are "
            "scored at their first sub-word. Baseline: tagging every word `O` scores entity F1 "
            f"0 and test token accuracy {o_share:.4f}.",
            "",
            "| entity type (test) | precision | recall | F1 | gold entities |",
            "|---|---|---|---|---|",
        ]
        for kind, s in sorted(test.per_type.items()):
            lines.append(
                f"| {kind} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | "
                f"{s['support']:,} |"
            )
        lines += ["", "Test sentences, entities bracketed (gold, then predicted):", ""]
        names = data.tag_names
        right, wrong = [], []
        for i, (gold_row, predicted) in enumerate(zip(gold_test, test.predicted)):
            gold = [names[t] for t in gold_row]
            if all(t == OUTSIDE for t in gold + predicted):
                continue
            (right if gold == predicted else wrong).append(
                (splits.words["test"][i], gold, predicted)
            )
        for words, gold, predicted in right[:EXAMPLES_SHOWN] + wrong[:EXAMPLES_SHOWN]:
            mark = "right" if gold == predicted else "wrong"
            lines.append(f"- gold: `{bracketed(words, gold)}`")
            lines.append(f"  predicted ({mark}): `{bracketed(words, predicted)}`")
        return lines

    def describe_data(self, setup) -> list[str]:
        data, splits = setup.data, setup.examples
        counts: dict[str, int] = {}
        for row in splits.tags["train"]:
            for kind, _, _ in entity_spans([data.tag_names[t] for t in row]):
                counts[kind] = counts.get(kind, 0) + 1
        lines = [
            f"- tags: {', '.join(data.tag_names)}; train entities: "
            + ", ".join(f"{n:,} {kind}" for kind, n in sorted(counts.items())),
            f"- words tokenized one by one, the tag on each word's first sub-word; inputs cut "
            f"to {data.max_length} tokens: "
            + ", ".join(f"{data.truncated_words(s):,} {s}" for s in SPLITS)
            + " words did not fit and are not scored",
        ]
        if splits.repaired:
            lines.append(
                f"- {splits.repaired:,} I- tags that began an entity were repaired to B- (IOB2)"
            )
        src = splits.source
        if "person_names" in src:
            lines.append(
                f"- generated silver standard (data/tagging.py): {src['plays']} plays, "
                f"{src['person_names']} character names (PER), {src['place_names']} places (LOC), "
                f"exact word match; {src['sentences_with_entities']:,} sentences with entities "
                f"and {src['sentences_without_entities']:,} without, generation seed "
                f"{src['generation_seed']}"
            )
        return lines
