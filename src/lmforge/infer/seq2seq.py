"""Text-to-text generation with an encoder-decoder (T5): greedy, sampling and beam search.

Every method encodes the batch of sources once (`model.start_decoding`: the encoder output's
cross-attention keys/values for every decoder layer) and then feeds the decoder one token per
sequence, its self-attention keys/values kept in a `KVCache`. Sources of different lengths are
right-padded; the padding is hidden from the encoder and from cross-attention by the mask, so a
padded row produces exactly what it would produce alone.

- Greedy and sampling: `sample_next` (infer/sampling.py) on each step's logits: temperature,
  top-k, top-p and repetition penalty (over the tokens generated so far).
- Beam search (as in Hugging Face's `BeamSearchScorer`, with early stopping): each step scores the
  `num_beams` live hypotheses of a source extended by every token, log p summed over the sequence,
  and keeps the 2 * num_beams best candidates; a candidate ending in EOS among the first num_beams
  is a finished hypothesis with score log p / length^length_penalty (length in generated tokens,
  EOS included), the others continue while there are num_beams of them. A source is done when it
  has num_beams finished hypotheses; at max_new_tokens the live beams count as finished too. The
  result is the finished hypothesis of highest score. With num_beams = 1 this is greedy decoding.
  `transformers`' `generate(num_beams=K, early_stopping=True)` picks the same tokens
  (tests/parity/test_hf_t5.py).

Outputs are token ids without the final EOS; the engine knows nothing about text except in
`generate`, which tokenizes prompts (appending EOS, as T5's inputs end with it) and decodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.infer.sampling import SamplingParams, sample_next


def _start_tokens(model: nn.Module, rows: int, device: torch.device) -> torch.Tensor:
    return torch.full((rows, 1), model.config.decoder_start_token_id, device=device)  # (rows, 1)


@torch.inference_mode()
def sample_ids(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    params: SamplingParams | None = None,
    eos_id: int | None = None,
) -> list[list[int]]:
    """Greedy (temperature 0) or sampled targets of sources (B, S); attention_mask (B, S)."""
    params = params or SamplingParams()
    B, device = input_ids.size(0), input_ids.device
    state = model.start_decoding(input_ids, attention_mask, max_len=params.max_new_tokens)
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device)
    tokens = _start_tokens(model, B, device)  # (B, 1)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    outputs: list[list[int]] = [[] for _ in range(B)]
    for _ in range(params.max_new_tokens):
        logits = model.decode(tokens, state)[:, -1]  # (B, V)
        token = sample_next(logits, params, generator, seen)  # (B,)
        if seen is not None:
            seen[torch.arange(B, device=device), token] = True
        for i, (t, done) in enumerate(zip(token.tolist(), finished.tolist())):
            if not done and t != eos_id:
                outputs[i].append(t)
        if eos_id is not None:
            finished |= token == eos_id
        if bool(finished.all()):
            break
        tokens = token[:, None]  # (B, 1)
    return outputs


@torch.inference_mode()
def beam_search(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_beams: int = 4,
    max_new_tokens: int = 64,
    eos_id: int | None = None,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """The best target of each source (B, S) by beam search (the module docstring)."""
    if num_beams < 1:
        raise UserError(f"num_beams must be at least 1, got {num_beams}")
    B, K, device = input_ids.size(0), num_beams, input_ids.device
    state = model.start_decoding(input_ids, attention_mask, max_len=max_new_tokens)
    state.reorder(torch.arange(B, device=device).repeat_interleave(K))  # B * K rows, beams of a
    # source side by side; at first only beam 0 is live (the K copies are the same hypothesis)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    sequences: list[list[int]] = [[] for _ in range(B * K)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    tokens = _start_tokens(model, B * K, device)  # (B*K, 1)
    for step in range(max_new_tokens):
        logp = model.decode(tokens, state)[:, -1].float().log_softmax(dim=-1)  # (B*K, V)
        V = logp.size(-1)
        candidates = (scores.view(B * K, 1) + logp).view(B, K * V)  # (B, K*V)
        top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=1)  # (B, 2K)
        rows, next_tokens, next_scores = [], [], []
        for b in range(B):
            live: list[tuple[float, int, int]] = []  # (score, row, token)
            if not done[b]:
                for rank, (s, i) in enumerate(zip(top_scores[b].tolist(), top_index[b].tolist())):
                    if s == float("-inf"):
                        break
                    row, token = b * K + i // V, i % V
                    if token == eos_id:
                        if rank < K:  # only EOS among the K best ends a hypothesis
                            length = step + 1
                            finished[b].append((s / length**length_penalty, sequences[row]))
                    else:
                        live.append((s, row, token))
                    if len(live) == K:
                        break
                done[b] = len(finished[b]) >= K
            if done[b]:
                live = []
            live += [(float("-inf"), b * K, eos_id or 0)] * (K - len(live))  # placeholders
            for s, row, token in live:
                rows.append(row)
                next_tokens.append(token)
                next_scores.append(s)
        if all(done):
            break
        index = torch.tensor(rows, device=device)
        sequences = [sequences[r] + [t] for r, t in zip(rows, next_tokens)]
        scores = torch.tensor(next_scores, device=device).view(B, K)
        state.reorder(index)
        tokens = torch.tensor(next_tokens, device=device)[:, None]  # (B*K, 1)
    for b in range(B):  # out of steps: the live beams are hypotheses too
        if not done[b]:
            for k in range(K):
                s = float(scores[b, k])
                if s > float("-inf"):
                    length = len(sequences[b * K + k])
                    finished[b].append((s / max(length, 1) ** length_penalty, sequences[b * K + k]))
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


def encode_sources(
    model: nn.Module, tokenizer, prompts: Sequence[str], append_eos: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded source ids (B, S) and their mask (B, S), each prompt followed by EOS."""
    eos = tokenizer.eos_id if append_eos else None
    ids = [tokenizer.encode(p) + ([eos] if eos is not None else []) for p in prompts]
    if any(not row for row in ids):
        raise UserError("every prompt needs at least one token")
    vocab = model.config.vocab_size
    if any(t >= vocab for row in ids for t in row):
        raise UserError(f"prompt contains token ids outside the model's vocabulary of {vocab}")
    longest = max(len(row) for row in ids)
    pad = model.config.pad_token_id
    device = next(model.parameters()).device
    input_ids = torch.tensor([row + [pad] * (longest - len(row)) for row in ids], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids], device=device)
    return input_ids, mask.bool()  # (B, S) each


def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    params: SamplingParams | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    ignore_eos: bool = False,
) -> list[str]:
    """The generated text of each prompt (a batch): beam search when num_beams > 1, else greedy
    or sampling as `params` say."""
    params = params or SamplingParams()
    if num_beams < 1:
        raise UserError(f"num_beams must be at least 1, got {num_beams}")
    model.eval()
    input_ids, mask = encode_sources(model, tokenizer, prompts)
    eos_id = None if ignore_eos else tokenizer.eos_id
    if num_beams > 1:
        ids = beam_search(
            model, input_ids, mask, num_beams, params.max_new_tokens, eos_id, length_penalty
        )
    else:
        ids = sample_ids(model, input_ids, mask, params, eos_id)
    return [tokenizer.decode(row) for row in ids]
