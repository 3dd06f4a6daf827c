"""Perplexity and bits per byte of a causal language model on text, by sliding windows.

Definitions, for N scored tokens x_1..x_N of a text of B UTF-8 bytes (natural logarithms):

    NLL        = -sum_i log p(x_i | x_<i)        total negative log-likelihood, nats (`nll_sum`)
    mean NLL   = NLL / N                         nats per token: the cross-entropy
    perplexity = exp(NLL / N)
    bits/token = NLL / (N ln 2)
    bits/byte  = NLL / (B ln 2)

Perplexity and bits per token depend on the tokenizer; bits per byte does not, so it compares
models with different vocabularies (Gao et al., 2020, "The Pile", section 4; lm-evaluation-harness's
`bits_per_byte`).

Sliding windows (Hugging Face, "Perplexity of fixed-length models",
https://huggingface.co/docs/transformers/perplexity): a model sees at most `context` tokens, so a
longer text is read in windows of `context` tokens whose starts move by `stride`. Each window scores
only the tokens the previous window did not, with the tokens before them in the window as context.
The default stride = context / 2 gives every scored token (after the first window) at least
context / 2 tokens of context; stride = context gives disjoint windows, the fastest and the most
pessimistic: a window's first token is then context only and is scored by no window. The cost is
about context / stride forward passes per token.

Documents. Each text (on the command line: each file) is a separate document, tokenized on its own;
no window crosses from one document into the next. By default the tokenizer's end-of-text token is
put before each document (`eos_prefix`): it is the separator that precedes every document in the
training data of GPT-2, SmolLM2 and `lmforge prepare`, so the document's first token is scored too,
given "a document starts here", and the byte count is exactly the text's (the rolling
log-likelihood of lm-evaluation-harness does the same). With `eos_prefix=False`, or a tokenizer
without such a token, the first token of each document is context only and its bytes are not
counted.

Implementation: several windows per forward pass (windows sorted by length and right-padded;
causal attention keeps real tokens from seeing the padding), the final hidden states
(`return_hidden=True`) projected through `lm_head` only at the scored positions and in row chunks,
so no (B, T, V) logits exist; `torch.inference_mode()`; fp32 unless another precision is asked for.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lmforge.device import autocast, resolve_device, resolve_precision
from lmforge.errors import UserError

TOKENS_PER_FORWARD = 4096
"""Default batch: as many windows as make about this many tokens per forward pass."""
LOGIT_CHUNK_ROWS = 1024
"""Scored positions projected to the vocabulary at a time (bounds the logits' memory)."""


@dataclass
class PerplexityResult:
    """Figures of one evaluation (definitions in the module docstring)."""

    tokens: int
    """Number of scored tokens N."""
    bytes: int
    """UTF-8 bytes B of the scored text."""
    nll_sum: float
    """Total negative log-likelihood, nats."""
    mean_nll: float
    """nll_sum / tokens: nats per token."""
    perplexity: float
    """exp(mean_nll)."""
    bits_per_byte: float
    """nll_sum / (ln 2 * bytes)."""
    bits_per_token: float
    """mean_nll / ln 2."""
    seconds: float
    """Wall time of the evaluation, tokenization included."""
    context: int = 0
    """Window length used, tokens."""
    stride: int = 0
    """Window step used, tokens."""
    documents: int = 0
    """Number of documents (texts) scored."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


@dataclass(frozen=True)
class Window:
    """Input positions [begin, end) of document `doc`; the tokens at [first, end) are scored."""

    doc: int
    begin: int
    end: int
    first: int


def sliding_windows(length: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first) of the windows over a sequence of `length` tokens.

    Window k reads [k * stride, min(k * stride + context, length)) and scores the positions from
    the previous window's end (position 1 at first: token 0 has no context) to its own end.
    """
    windows, begin, scored_to = [], 0, 1
    while True:
        end = min(begin + context, length)
        first = max(scored_to, begin + 1)  # a window's own first token has no context in it
        if end > first:
            windows.append((begin, end, first))
        scored_to = end
        if end >= length:
            return windows
        begin += stride


def perplexity(
    model: nn.Module,
    tokenizer,
    texts_or_token_ids: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
    context: int | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    precision: str = "fp32",
    eos_prefix: bool = True,
) -> PerplexityResult:
    """Sliding-window perplexity and bits per byte of `model` on one or more documents.

    texts_or_token_ids: a text, a list of texts, a list of token ids or a list of such lists;
        each text or id list is one document.
    context: window length in tokens (default: the model's max_seq_len).
    stride: window step (default context // 2; context = disjoint windows).
    batch_size: windows per forward pass (default: about 4096 tokens per pass).
    device: where to run (`auto`, `cpu`, `cuda`...); the model is moved there. Default: where the
        model's parameters are.
    precision: fp32 (default), auto, bf16 or fp16 (autocast).
    eos_prefix: put the tokenizer's end-of-text token before each document (module docstring).
    """
    t0 = time.perf_counter()
    cfg = model.config
    context = cfg.max_seq_len if context is None else context
    stride = max(1, context // 2) if stride is None else stride
    _check_options(context, stride, batch_size, cfg.max_seq_len)
    batch_size = batch_size or max(1, TOKENS_PER_FORWARD // context)
    if device is not None:
        model.to(resolve_device(str(device)))
    run_device = next(model.parameters()).device
    dtype = resolve_precision(precision, run_device)

    docs, n_bytes = _documents(tokenizer, texts_or_token_ids, eos_prefix, cfg.vocab_size)
    windows = [
        Window(d, *w)
        for d, ids in enumerate(docs)
        for w in sliding_windows(len(ids), context, stride)
    ]
    windows.sort(key=lambda w: w.end - w.begin, reverse=True)  # similar lengths share a batch
    n_tokens = sum(w.end - w.first for w in windows)

    was_training = model.training
    model.eval()
    nll_sum, done = 0.0, 0
    bar = tqdm(
        total=n_tokens,
        desc="perplexity",
        unit="tok",
        unit_scale=True,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            nll_sum += _score_batch(model, docs, batch, run_device, dtype)
            scored = sum(w.end - w.first for w in batch)
            done += scored
            bar.update(scored)
            bar.set_postfix(ppl=f"{math.exp(min(nll_sum / done, 700)):.3f}", refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    return _result(nll_sum, n_tokens, n_bytes, time.perf_counter() - t0, context, stride, len(docs))


def _check_options(context: int, stride: int, batch_size: int | None, max_seq_len: int) -> None:
    if context < 2:
        raise UserError(f"context must be at least 2 tokens, got {context}")
    if context > max_seq_len:
        raise UserError(
            f"context {context} is larger than the model's max_seq_len {max_seq_len}; "
            f"pass --context {max_seq_len} or less"
        )
    if not 1 <= stride <= context:
        raise UserError(f"stride must be between 1 and the context ({context}), got {stride}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")


def _documents(
    tokenizer, inputs, eos_prefix: bool, vocab_size: int
) -> tuple[list[torch.Tensor], int]:
    """Token id tensors of each document (prefix included) and the UTF-8 bytes they score."""
    texts, id_lists = _split_inputs(inputs)
    if id_lists is None:
        id_lists = tokenizer.encode_batch(texts)
    else:
        texts = [tokenizer.decode(ids) for ids in id_lists]
    if not id_lists:
        raise UserError("no text to evaluate; pass at least one non-empty document")
    prefix = tokenizer.document_separator_id if eos_prefix else None
    top = max((max(ids) for ids in id_lists if ids), default=0)
    if top >= vocab_size:
        raise UserError(f"token id {top} is outside the model's vocabulary of {vocab_size}")
    docs, n_bytes = [], 0
    for i, (text, ids) in enumerate(zip(texts, id_lists)):
        if len(ids) < 2:
            raise UserError(
                f"document {i} has {len(ids)} token(s); perplexity needs at least 2: "
                "pass a longer text"
            )
        n_bytes += len(text.encode("utf-8"))
        if prefix is None:  # the first token is context only: leave its bytes out
            n_bytes -= len(tokenizer.decode(ids[:1]).encode("utf-8"))
        docs.append(torch.tensor(([prefix] if prefix is not None else []) + list(ids)))
    return docs, max(n_bytes, 1)


def _split_inputs(inputs) -> tuple[list[str], list[list[int]] | None]:
    """(texts, None) for text input, ([], id lists) for token-id input."""
    if isinstance(inputs, str):
        return [inputs], None
    items = list(inputs.tolist() if isinstance(inputs, torch.Tensor) else inputs)
    if items and all(isinstance(x, int) for x in items):
        return [], [items]
    if all(isinstance(x, str) for x in items):
        return items, None
    return [], [x.tolist() if isinstance(x, torch.Tensor) else list(x) for x in items]


@torch.inference_mode()
def _score_batch(
    model: nn.Module,
    docs: list[torch.Tensor],
    batch: list[Window],
    device: torch.device,
    dtype: torch.dtype,
) -> float:
    """Summed NLL (nats) of the scored tokens of a batch of windows, in one forward pass."""
    width = max(w.end - w.begin for w in batch)
    inputs = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T), right-padded with id 0
    targets = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T): token after position t
    scored = torch.zeros(len(batch), width, dtype=torch.bool)  # (B, T)
    for i, w in enumerate(batch):
        ids = docs[w.doc][w.begin : w.end]
        inputs[i, : len(ids)] = ids
        # The hidden state at window position p predicts the token at p + 1.
        lo, hi = w.first - w.begin - 1, w.end - w.begin - 1
        targets[i, lo:hi] = ids[lo + 1 : hi + 1]
        scored[i, lo:hi] = True
    with autocast(device, dtype):
        hidden = model(inputs.to(device), return_hidden=True)  # (B, T, C)
        hidden = hidden[scored.to(device)]  # (N, C): only the scored positions
        nll = token_nll(model.lm_head, hidden, targets[scored].to(device))  # (N,)
    return nll.cpu().sum(dtype=torch.float64).item()  # fp64 on the CPU (MPS has none)


def token_nll(
    lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = LOGIT_CHUNK_ROWS
) -> torch.Tensor:
    """-log p(target) (N,) in fp32 from hidden states (N, C), `chunk` rows of logits at a time."""
    out = []
    for s in range(0, hidden.size(0), chunk):
        logits = lm_head(hidden[s : s + chunk]).float()  # (n, V)
        picked = logits.gather(1, targets[s : s + chunk, None]).squeeze(1)  # (n,)
        out.append(torch.logsumexp(logits, dim=-1) - picked)
    return torch.cat(out)


def _result(
    nll_sum: float, tokens: int, n_bytes: int, seconds: float, context: int, stride: int, docs: int
) -> PerplexityResult:
    mean = nll_sum / tokens
    return PerplexityResult(
        tokens=tokens,
        bytes=n_bytes,
        nll_sum=nll_sum,
        mean_nll=mean,
        perplexity=math.exp(mean) if mean < 700 else math.inf,
        bits_per_byte=nll_sum / (math.log(2) * n_bytes),
        bits_per_token=mean / math.log(2),
        seconds=seconds,
        context=context,
        stride=stride,
        documents=docs,
    )
