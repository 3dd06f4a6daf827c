"""Zero- and few-shot classification by prompting: no training, the label the model finds likeliest.

In-context learning (Brown et al., 2020, "Language Models are Few-Shot Learners", section 2): a
decoder reads an instruction, k solved examples (the demonstrations; k = 0 is zero-shot) and the
text to classify, and each label is scored by the log-likelihood of its verbalizer (a word naming
it, read with a leading space) as the continuation:

    y_hat = argmax_c  sum_j log p(v_c,j | prompt, v_c,<j)

The prompt:

    {instruction}

    Text: {demonstration 1}
    Label: {its verbalizer}

    ... (k demonstrations)

    Text: {the text}
    Label:

Demonstrations come from the training split, drawn by seed and balanced over the labels (round
robin over a shuffled list per label), and are the same for every text, as in GPT-3's evaluation.
Texts are cut to `max_text_tokens` tokens. Scoring runs every (text, label) continuation as one row
of a right-padded batch (causal attention keeps real tokens from seeing the padding) and projects
only the verbalizer positions to the vocabulary (eval/perplexity.py `token_nll`). When every
verbalizer is one token, one row per text suffices: the distribution after the prompt scores all
labels at once (the same numbers for a fraction of the work).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lmforge.data.classification import LabelledSplits, pad_right
from lmforge.device import autocast
from lmforge.errors import UserError
from lmforge.eval.classification import ClassificationMetrics, classification_metrics
from lmforge.eval.perplexity import token_nll

ROWS_PER_BATCH = 16


@dataclass(frozen=True)
class PromptFormat:
    instruction: str
    """First paragraph of every prompt."""
    verbalizers: tuple[str, ...]
    """The word for each label, in label order."""
    shots: int = 0
    """Demonstrations per prompt (0 = zero-shot)."""
    max_text_tokens: int = 96
    """Each text (demonstrations too) cut to this many tokens."""
    seed: int = 0
    """Seed of the demonstrations' draw."""


ROTTEN_TOMATOES_FORMAT = {
    "instruction": "Classify the sentiment of each movie review as positive or negative.",
    "verbalizers": {"fresh": "positive", "rotten": "negative"},
}
"""The built-in data's prompt: its labels' names are the site's, not sentiment words."""


def prompt_format(
    label_names: Sequence[str],
    shots: int,
    source: str = "",
    instruction: str = "",
    verbalizers: dict[str, str] | None = None,
    seed: int = 0,
    max_text_tokens: int = 96,
) -> PromptFormat:
    """The prompt format for a label set: the given instruction and verbalizers, else the built-in
    data's (Rotten Tomatoes), else "Classify each text as one of: ..." and the label names."""
    builtin = ROTTEN_TOMATOES_FORMAT if source == "rotten-tomatoes" else {}
    words = {**builtin.get("verbalizers", {}), **(verbalizers or {})}
    unknown = set(verbalizers or {}) - set(label_names)
    if unknown:
        raise UserError(
            f"verbalizers name labels not in the data: {', '.join(sorted(unknown))}; the labels "
            f"are {', '.join(label_names)}"
        )
    chosen = tuple(words.get(name, name) for name in label_names)
    if len(set(chosen)) != len(chosen):
        raise UserError(f"two labels share a verbalizer ({', '.join(chosen)}); give each its own")
    if shots < 0:
        raise UserError(f"shots must be >= 0, got {shots}")
    default = f"Classify each text as one of: {', '.join(chosen)}."
    return PromptFormat(
        instruction or builtin.get("instruction", default), chosen, shots, seed=seed
    )


def draw_demonstrations(splits: LabelledSplits, k: int, seed: int) -> list[tuple[str, int]]:
    """k training examples (text, label), balanced over the labels: round robin over each label's
    examples in a seeded random order."""
    rng = np.random.default_rng(seed)
    by_label = {c: [] for c in range(len(splits.label_names))}
    for text, label in zip(splits.texts["train"], splits.labels["train"]):
        by_label[label].append(text)
    pools = {c: [texts[i] for i in rng.permutation(len(texts))] for c, texts in by_label.items()}
    demos: list[tuple[str, int]] = []
    for round_ in range(k):
        label = round_ % len(pools)
        if round_ // len(pools) < len(pools[label]):
            demos.append((pools[label][round_ // len(pools)], label))
    order = rng.permutation(len(demos))  # labels not in a fixed rhythm
    return [demos[i] for i in order]


class PromptClassifier:
    """A decoder and a prompt format: the label each text's prompt makes likeliest."""

    def __init__(self, model: nn.Module, tokenizer, fmt: PromptFormat, demos: list) -> None:
        self.model, self.tokenizer, self.fmt = model, tokenizer, fmt
        context = "".join(
            f"Text: {self._cut(text)}\nLabel: {fmt.verbalizers[label]}\n\n" for text, label in demos
        )
        self.prefix = f"{fmt.instruction}\n\n{context}"
        self.verbalizer_ids = [tokenizer.encode(" " + v) for v in fmt.verbalizers]

    def _cut(self, text: str) -> str:
        ids = self.tokenizer.encode(text)
        return (
            text
            if len(ids) <= self.fmt.max_text_tokens
            else self.tokenizer.decode(ids[: self.fmt.max_text_tokens])
        )

    def prompt(self, text: str) -> str:
        return f"{self.prefix}Text: {self._cut(text)}\nLabel:"

    @torch.no_grad()
    def scores(
        self, texts: Sequence[str], device: torch.device, dtype: torch.dtype, progress: bool = True
    ) -> torch.Tensor:
        """Log-likelihood of every label's verbalizer after every text's prompt: (N, labels)."""
        model = self.model.to(device).eval()
        prompts = [self.tokenizer.encode(self.prompt(t)) for t in texts]
        one_token = all(len(v) == 1 for v in self.verbalizer_ids)
        labels = [None] if one_token else range(len(self.verbalizer_ids))
        rows = [(i, c) for i in range(len(texts)) for c in labels]
        rows.sort(key=lambda r: len(prompts[r[0]]))
        out = torch.empty(len(texts), len(self.verbalizer_ids))
        starts = range(0, len(rows), ROWS_PER_BATCH)
        for start in tqdm(starts, desc="prompting", unit="batch", disable=not progress):
            batch = rows[start : start + ROWS_PER_BATCH]
            sequences = [
                prompts[i] + ([] if c is None else self.verbalizer_ids[c]) for i, c in batch
            ]
            longest = max(len(s) for s in sequences) + one_token  # + the label token
            if longest > model.config.max_seq_len:
                raise UserError(
                    f"a prompt of {longest} tokens exceeds the model's context of "
                    f"{model.config.max_seq_len}; use fewer shots or a smaller max_text_tokens"
                )
            ids, _ = pad_right(sequences, 0)  # (B, T)
            if one_token:  # every label scored from the last position's distribution
                with autocast(device, dtype):
                    hidden = model(ids.to(device), return_hidden=True)  # (B, T, C)
                last = hidden[torch.arange(len(batch)), [len(s) - 1 for s in sequences]]  # (B, C)
                logp = model.lm_head(last).float().log_softmax(-1)  # (B, V)
                words = torch.tensor([v[0] for v in self.verbalizer_ids], device=logp.device)
                out[[i for i, _ in batch]] = logp[:, words].cpu()
                continue
            with autocast(device, dtype):
                hidden = model(ids[:, :-1].to(device), return_hidden=True)  # (B, T - 1, C)
            for b, (i, c) in enumerate(batch):
                n, end = len(self.verbalizer_ids[c]), len(sequences[b]) - 1
                targets = ids[b, end - n + 1 : end + 1].to(device)  # the verbalizer's tokens
                nll = token_nll(model.lm_head, hidden[b, end - n : end].float(), targets)
                out[i, c] = -nll.sum().cpu()
        return out

    def evaluate(
        self,
        splits: LabelledSplits,
        split: str,
        device: torch.device,
        dtype: torch.dtype,
        limit: int = 0,
        progress: bool = True,
    ) -> ClassificationMetrics:
        """Accuracy and F1 of the prompted predictions on (the first `limit` of) `split`."""
        n = min(limit, splits.size(split)) if limit > 0 else splits.size(split)
        predicted = self.scores(splits.texts[split][:n], device, dtype, progress).argmax(-1)
        labels = torch.tensor(splits.labels[split][:n])
        return classification_metrics(predicted, labels, len(splits.label_names))
