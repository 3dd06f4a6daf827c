"""Prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
section 2).

P learned vectors, the soft prompt P_e (P, C), are put before the embedded input X_e (T, C): the
frozen model reads [P_e; X_e] and only P_e (and a task head, if any) is trained, P x C parameters.
Lester et al. initialise P_e from the embeddings of real tokens: sampled from the 5,000 most common
of the vocabulary, or the words of the class labels (section 3.2, "sampled vocab" and "class
label"); `initial_prompt` does both: random tokens among the first 5,000 ids (a BPE numbers its
merges in order of frequency, so these are about the commonest), or the tokens of a text repeated
to fill P.

How, in place and for every caller (classification pooling, the causal-LM loss, the KV-cached
engine), without changing the model's code:
- The virtual tokens are P extra vocabulary entries: `PromptEmbedding` replaces the model's
  `embed_tokens`; ids V, ..., V + P - 1 (V the model's vocabulary) look up the rows of P_e, the
  others the frozen table. Prepending the soft prompt is prepending these ids.
- `PromptTuned` wraps the model. At the first pass (no cache, or an empty one) it puts the P
  virtual ids before the tokens, at positions 0..P-1, the tokens moving to P, P+1, ...; every token
  attends to the whole prompt and the prompt to itself causally. It returns the hidden states or
  logits of the real tokens only, so a pooling of the last real token, a loss whose labels are
  aligned with the tokens, and any other caller see the shapes they expect.
- Cached decoding: the prompt enters the KV cache with the first pass; a later step only moves
  its positions by P and adds the P prompt keys to its mask. `new_cache` makes room for them and
  `config.max_seq_len` is the context left for real tokens, so the engine (infer/engine.py) needs
  no change, and cached decoding equals the full forward pass (tests/unit/test_prompt_tuning.py).
Decoders (gpt) only: an encoder's positions and padding are handled inside its own forward pass.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.models import registry
from lmforge.models.loading import tied_names

COMMON_TOKENS = 5000
"""`vocab` initialisation samples ids below this (Lester et al.: the 5,000 most common tokens)."""
INITS = ("vocab", "text")


class PromptEmbedding(nn.Module):
    """A token embedding with P virtual tokens after its vocabulary: ids below V look up the
    frozen table `base`, ids V..V+P-1 the trainable rows of `prompt` (P, C)."""

    def __init__(self, base: nn.Embedding, prompt: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.prompt = nn.Parameter(prompt.detach().clone().to(base.weight.dtype))

    @property
    def weight(self) -> torch.Tensor:
        """The vocabulary's table (an output layer tied to it stays tied)."""
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        vocab = self.base.num_embeddings
        virtual = ids >= vocab  # (B, T)
        x = self.base(torch.where(virtual, 0, ids))  # (B, T, C)
        rows = self.prompt[(ids - vocab).clamp(0, len(self.prompt) - 1)]  # (B, T, C)
        return torch.where(virtual[..., None], rows, x)


class PromptTuned(nn.Module):
    """A decoder (`GPT`) that reads a soft prompt before its input; see the module docstring.
    Called like the decoder: (input_ids, positions, mask, cache, return_hidden)."""

    def __init__(self, base: nn.Module, prompt: torch.Tensor) -> None:
        super().__init__()
        require_decoder(base)
        num_tokens = len(prompt)
        if num_tokens >= base.config.max_seq_len:
            raise UserError(
                f"prompt.num_tokens {num_tokens} leaves no room in the model's context of "
                f"{base.config.max_seq_len} tokens"
            )
        self.base = base
        self.num_tokens = num_tokens
        self.config = replace(base.config, max_seq_len=base.config.max_seq_len - num_tokens)
        """The base's config with the context left for real tokens."""
        base.embed_tokens = PromptEmbedding(base.embed_tokens, prompt)  # in place

    @property
    def prompt(self) -> nn.Parameter:
        """The soft prompt P_e, (P, C)."""
        return self.base.embed_tokens.prompt

    @property
    def lm_head(self) -> nn.Module:
        return self.base.lm_head

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache=None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """The base's logits (B, T, V), or hidden states (B, T, C), of the real tokens (B, T);
        positions and mask as the base takes them, counted over the real tokens only."""
        P = self.num_tokens
        if cache is not None and cache.length > 0:  # the prompt is in the cache already
            if positions is not None:
                positions = positions + P
            if mask is not None:  # (..., T, S) -> (..., T, P + S): the prompt keys are visible
                mask = torch.cat([mask.new_ones(*mask.shape[:-1], P), mask], -1)
            return self.base(
                input_ids, positions=positions, mask=mask, cache=cache, return_hidden=return_hidden
            )
        B, T = input_ids.shape
        if self.base.config.max_seq_len < P + T:  # the context cannot hold them
            raise UserError(
                f"{T} tokens after the {P} prompt-tuning tokens exceed the model's context of "
                f"{self.base.config.max_seq_len}; shorten the input (train.block_size)"
            )
        vocab = self.base.embed_tokens.num_embeddings
        virtual = torch.arange(vocab, vocab + P, device=input_ids.device)  # (P,)
        ids = torch.cat([virtual.expand(B, P), input_ids], 1)  # (B, P + T)
        if positions is not None:  # (T,) or (B, T) -> (P + T,) or (B, P + T)
            first = torch.arange(P, device=positions.device).expand(*positions.shape[:-1], P)
            positions = torch.cat([first, positions + P], -1)
        if mask is not None:
            mask = prompt_mask(mask, P)
        out = self.base(
            ids, positions=positions, mask=mask, cache=cache, return_hidden=return_hidden
        )
        return out[:, P:]  # (B, T, V or C): the real tokens'

    def new_cache(self, batch_size: int, max_len: int | None = None, static: bool = False):
        """A KV cache with room for the prompt and `max_len` real tokens (default: all that fit)."""
        return self.base.new_cache(
            batch_size, (max_len or self.config.max_seq_len) + self.num_tokens, static
        )

    def num_params(self, non_embedding: bool = False) -> int:
        """The base's count, which includes the soft prompt (a parameter of its embedding)."""
        return self.base.num_params(non_embedding)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        return self.base.flops_per_token(seq_len)

    def tied_parameter_names(self) -> set[str]:
        return {f"base.{n}" for n in tied_names(self.base)}

    def tie_weights(self) -> None:
        self.base.tie_weights()

    def reset_buffers(self) -> None:
        self.base.reset_buffers()

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}"


def require_decoder(model: nn.Module) -> None:
    """A `UserError` unless `model` is a decoder, the family prompt tuning is implemented for."""
    family = registry.family_of(model).name
    if family != "gpt":
        raise UserError(
            f"prompt tuning is implemented for decoder (gpt) models, not {family}; "
            "use --method adapter or lora"
        )


def prompt_mask(mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """A first pass's mask (..., T, S) over the real tokens, extended to (..., P + T, P + S) over
    the prompt and the tokens: the prompt attends causally to itself only, every token to the
    whole prompt and, as `mask` says, to the tokens."""
    P, T, S = num_tokens, mask.size(-2), mask.size(-1)
    lead = mask.shape[:-2]
    causal = torch.ones(P, P, dtype=torch.bool, device=mask.device).tril()  # (P, P)
    top = torch.cat([causal, causal.new_zeros(P, S)], -1).expand(*lead, P, P + S)
    bottom = torch.cat([mask.new_ones(*lead, T, P), mask], -1)  # (..., T, P + S)
    return torch.cat([top, bottom], -2)  # (..., P + T, P + S)


def initial_prompt(
    model: nn.Module,
    num_tokens: int,
    init: str = "vocab",
    text: str = "",
    tokenizer=None,
    seed: int = 0,
) -> torch.Tensor:
    """A soft prompt (P, C) made of the embeddings of real tokens: `vocab`, random ids among the
    first 5,000; `text`, the tokens of `text` repeated to fill P."""
    if num_tokens < 1:
        raise UserError(f"prompt.num_tokens must be at least 1, got {num_tokens}")
    table = model.embed_tokens.weight  # (V, C)
    if init == "vocab":
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, min(COMMON_TOKENS, len(table)), (num_tokens,), generator=generator)
    elif init == "text":
        tokens = tokenizer.encode(text) if tokenizer is not None and text.strip() else []
        if not tokens:
            raise UserError("prompt.init=text needs a prompt.text to take the embeddings from")
        ids = torch.tensor((tokens * math.ceil(num_tokens / len(tokens)))[:num_tokens])
    else:
        raise UserError(f"unknown prompt.init {init!r}; choose one of: {', '.join(INITS)}")
    return table.detach()[ids.to(table.device)].clone()  # (P, C)
