"""KV-cached generation engine: token ids in, token ids out. It knows nothing about text.

1. Prefill: the prompts go through the model once, filling the KV cache; only the last position's
   hidden state is projected onto the vocabulary.
2. Decode: each step feeds one token per sequence, reading earlier keys/values from the cache, so
   a step costs O(context) attention instead of a full forward pass over the sequence.
Prompts of different lengths are left-padded into one batch: each row gets its own positions
(0, 1, ... from its first real token) and a mask that hides the padding keys, so a padded row
produces exactly the tokens it would produce alone.
After `compile_decoding(model)`, the decode steps run as one compiled graph that reads the whole
cache, masked (infer/compiled.py); the tokens are the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from lmforge.device import tune_cpu_allocator
from lmforge.errors import UserError
from lmforge.infer.fast_linear import use_decode_linears
from lmforge.infer.sampling import SamplingParams, sample_next


class Engine:
    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":
            use_decode_linears(model)  # same weights, faster products for few rows
            tune_cpu_allocator()
        self.context = model.config.max_seq_len
        self.compiled_step = getattr(model, "compiled_decode_step", None)  # infer/compiled.py

    def _check_lengths(self, prompts: list[list[int]]) -> int:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("every prompt needs at least one token")
        longest = max(len(p) for p in prompts)
        if longest >= self.context:
            raise UserError(
                f"prompt of {longest} tokens does not fit the model's context of {self.context} "
                "tokens (with room for one new token); shorten the prompt"
            )
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for p in prompts for t in p):
            raise UserError(f"prompt contains token ids outside the model's vocabulary of {vocab}")
        return longest

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        stop_token_ids: set[int] | frozenset[int] = frozenset(),
    ) -> Iterator[list[int | None]]:
        """Yield, per decoding step, the new token of each sequence (None once it has stopped).

        A sequence stops at a token in `stop_token_ids` (that token is yielded) or after
        `params.max_new_tokens`; generation also ends when the context is full.
        """
        longest = self._check_lengths(prompts)
        B = len(prompts)
        max_new = min(params.max_new_tokens, self.context - longest)
        device = self.device
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)

        padded = any(len(p) != longest for p in prompts)
        ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=device)  # (B, L)
        compiled = self.compiled_step is not None
        valid = torch.ones(B, longest + max_new, dtype=torch.bool, device=device)  # real keys
        for i, p in enumerate(prompts):
            valid[i, : longest - len(p)] = False  # the left padding
        lengths = torch.tensor([len(p) for p in prompts], device=device)  # next position per row

        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(B, self.model.config.vocab_size, dtype=torch.bool, device=device)
            for i, p in enumerate(prompts):
                seen[i, p] = True

        cache = self.model.new_cache(B, longest + max_new, static=compiled)
        positions = mask = None
        if compiled and longest == 1:  # one token: a static cache's step path, which needs a mask
            mask = _step_mask(valid, 0)
        elif padded:
            positions = (valid[:, :longest].long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
            causal = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
            mask = causal[None] & valid[:, None, :longest]  # (B, L, L)
            mask = mask | ~valid[:, :longest, None]  # padding queries see everything (unused)
            mask = mask[:, None]  # (B, 1, L, L)
        hidden = self.model(ids, positions=positions, mask=mask, cache=cache, return_hidden=True)
        logits = self.model.lm_head(hidden[:, -1])  # (B, V)

        finished = torch.zeros(B, dtype=torch.bool, device=device)
        stop_ids = torch.tensor(sorted(stop_token_ids), dtype=torch.long, device=device)
        for step in range(max_new):
            token = sample_next(logits, params, generator, seen)  # (B,)
            if seen is not None:
                seen[torch.arange(B, device=device), token] = True
            out = token.tolist()
            done_before = finished.tolist()
            yield [None if d else t for t, d in zip(out, done_before)]
            if stop_ids.numel():
                finished |= torch.isin(token, stop_ids)
            if bool(finished.all()) or step == max_new - 1:
                return
            if compiled:  # the whole cache, the positions not written yet masked: fixed shapes
                positions = lengths[:, None] + step  # (B, 1)
                mask = _step_mask(valid, longest + step)
                logits = self.compiled_step(self.model, token[:, None], positions, mask, cache)
            else:
                if padded:
                    positions = lengths[:, None] + step  # (B, 1)
                    mask = valid[:, None, None, : longest + step + 1]  # (B, 1, 1, S)
                logits = self.model(token[:, None], positions=positions, mask=mask, cache=cache)
                logits = logits[:, -1]

    def generate_ids(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        stop_token_ids: set[int] | frozenset[int] = frozenset(),
    ) -> list[list[int]]:
        """The full list of new token ids of every prompt."""
        outputs: list[list[int]] = [[] for _ in prompts]
        for step in self.generate(prompts, params, stop_token_ids):
            for i, token in enumerate(step):
                if token is not None:
                    outputs[i].append(token)
        return outputs


def _step_mask(valid: torch.Tensor, slot: int) -> torch.Tensor:
    """(B, 1, 1, S): the real keys among the cache's S positions up to `slot`, this step's."""
    written = torch.arange(valid.size(1), device=valid.device) <= slot  # (S,)
    return (valid & written)[:, None, None, :]
