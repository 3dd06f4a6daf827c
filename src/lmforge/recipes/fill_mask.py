"""`lmforge fill-mask --model DIR --text "... [MASK] ..." [--top-k 5]`: a masked LM's guesses.

The text is framed as in pre-training, [CLS] text [SEP], and for each [MASK] in it the model's
distribution over the vocabulary at that position, softmax(MLM logits), gives the top-k tokens
with their probabilities (Devlin et al., 2019, section 3.1). The model directory may be an lmforge
run or model directory or a Hugging Face `BertForMaskedLM` directory; it must be a BERT.

    lmforge fill-mask --model runs/bert --text "the king and [MASK] of the realm"
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge.device import resolve_device
from lmforge.errors import UserError
from lmforge.models import registry
from lmforge.tokenizer import Tokenizer

MASK_TOKEN = "[MASK]"
NO_MASK = "the text has no [MASK] token; write [MASK] where a word should be guessed"


@dataclass
class FillMaskConfig:
    model: str
    """Model or run directory of a BERT (lmforge or Hugging Face BertForMaskedLM)."""
    text: str
    """Text with one or more [MASK] tokens."""
    top_k: int = 5
    """Candidates shown per [MASK]."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""


@dataclass
class Candidate:
    token: str
    """The vocabulary entry (a WordPiece continuation keeps its `##`)."""
    token_id: int
    probability: float


@dataclass
class MaskPrediction:
    index: int
    """Position of the [MASK] among the text's tokens (0 = the first token of the text)."""
    candidates: list[Candidate]
    """The top-k tokens, most likely first."""


@torch.no_grad()
def predict_masked(
    model: nn.Module, tokenizer: Tokenizer, ids: list[int], top_k: int = 5
) -> list[MaskPrediction]:
    """The top-k candidates at every [MASK] of the token ids `ids` (no [CLS]/[SEP] in them)."""
    mask_id, cls_id, sep_id = (tokenizer.token_to_id(t) for t in (MASK_TOKEN, "[CLS]", "[SEP]"))
    if mask_id is None or cls_id is None or sep_id is None:
        raise UserError(
            "the model's tokenizer lacks [MASK], [CLS] or [SEP]: fill-mask needs a BERT "
            "WordPiece tokenizer"
        )
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if mask_id not in ids:
        raise UserError(NO_MASK)
    limit = model.config.max_seq_len
    if len(ids) + 2 > limit:
        raise UserError(
            f"the text is {len(ids)} tokens, more than the model's {limit - 2} (with [CLS] and "
            "[SEP]); shorten it"
        )
    device = next(model.parameters()).device
    x = torch.tensor([[cls_id, *ids, sep_id]], device=device)  # (1, T)
    was_training = model.training
    model.eval()
    logits = model(x)[0, 1:-1, : tokenizer.vocab_size]  # (len(ids), V): the text's positions
    model.train(was_training)
    probs = logits.float().softmax(dim=-1)
    k = min(top_k, probs.size(-1))
    out = []
    for index in (i for i, t in enumerate(ids) if t == mask_id):
        top = probs[index].topk(k)
        candidates = [
            Candidate(tokenizer.id_to_token(int(i)) or "", int(i), float(p))
            for p, i in zip(top.values, top.indices)
        ]
        out.append(MaskPrediction(index, candidates))
    return out


def fill_mask(
    model: nn.Module, tokenizer: Tokenizer, text: str, top_k: int = 5
) -> list[MaskPrediction]:
    """The top-k candidates, with probabilities, for each [MASK] in `text`, in order."""
    return predict_masked(model, tokenizer, tokenizer.encode(text), top_k)


def filled_text(tokenizer: Tokenizer, text: str, predictions: list[MaskPrediction]) -> str:
    """`text` with every [MASK] replaced by its most likely token."""
    ids = tokenizer.encode(text)
    for p in predictions:
        ids[p.index] = p.candidates[0].token_id
    return tokenizer.decode(ids)


def load_masked_lm(directory: str | Path, device: torch.device) -> tuple[nn.Module, Tokenizer]:
    """A BERT and its tokenizer from an lmforge or Hugging Face directory (`UserError` if the
    directory holds another family or no tokenizer)."""
    from lmforge.models.loading import check_vocab
    from lmforge.recipes.convert import load_any

    model, tokenizer, _ = load_any(directory)
    family = registry.family_of(model).name
    if family != "bert":
        raise UserError(
            f"{directory} holds a {family} model; fill-mask needs a masked LM (a bert model: "
            "lmforge pretrain --objective mlm)"
        )
    if tokenizer is None:
        raise UserError(f"{directory} has no tokenizer.json; fill-mask needs the model's tokenizer")
    check_vocab(tokenizer, model.config, directory)
    return model.to(device).eval(), tokenizer


def main(cfg: FillMaskConfig, out=None) -> list[MaskPrediction]:
    out = out or sys.stdout
    if MASK_TOKEN not in cfg.text:
        raise UserError(NO_MASK)
    model, tokenizer = load_masked_lm(cfg.model, resolve_device(cfg.device))
    predictions = fill_mask(model, tokenizer, cfg.text, cfg.top_k)
    for n, prediction in enumerate(predictions, start=1):
        out.write(f"[MASK] {n} of {len(predictions)} (token {prediction.index}):\n")
        for c in prediction.candidates:
            out.write(f"  {c.probability:7.4f}  {c.token}\n")
    out.write(f"top-1: {filled_text(tokenizer, cfg.text, predictions)}\n")
    out.flush()
    return predictions
