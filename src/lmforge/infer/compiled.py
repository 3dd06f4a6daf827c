"""Compiled decoding: each one-token step of a decoder runs as one graph built by `torch.compile`.

Decoding a small model eagerly pays per operation as well as per weight: SmolLM2-135M at batch 1
spends about a quarter of each step outside the matrix products, in hundreds of small operations
(norms, rotary, residual adds, activations, cache writes) each dispatched from Python
(benchmarks/README.md). `torch.compile` (TorchInductor) traces the model's own forward pass for one
token into one graph, fuses those small operations into generated C++ loops, and with
`cpp_wrapper` calls the kernels without returning to Python between them. The matrix products stay
ours (`infer/fast_linear.py`).

A compiled graph holds for the shapes it was traced with, and the cache grows by one position a
step. So compiled steps read a `StaticKVCache`, allocated once for the prompt and every new token:
each step writes its keys and values at a slot given as a tensor and attends over the whole cache,
the positions not written yet hidden by the mask. The cache's length (its capacity) is marked
dynamic, so one graph serves every step of every generation with the same batch size. The prefill
(the prompt, several tokens) stays eager.

Compiling takes a minute or more for a model the size of SmolLM2 the first time; TorchInductor
caches its output on disk, and a new process then needs 10-20 s. It pays for long generations and
chat sessions, not for one short answer. On a CPU it needs a C++ compiler.

    from lmforge.infer import compile_decoding, generate
    compile_decoding(model)            # every later generation with this model uses it
    generate(model, tokenizer, "ROMEO:")
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.infer import fast_linear
from lmforge.models import registry
from lmforge.nn import StaticKVCache


def one_token_step(
    model: nn.Module,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    cache: StaticKVCache,
) -> torch.Tensor:
    """Logits (B, V) of the next token after `tokens` (B, 1) at `positions` (B, 1); mask:
    (B, 1, 1, capacity), True at the cache positions each row may attend to."""
    return model(tokens, positions=positions, mask=mask, cache=cache)[:, -1]


class CompiledDecodeStep:
    """`one_token_step` compiled: called with the same arguments, it marks the mask's length dynamic
    (as the cache's is, so one graph serves every capacity) and turns a failure to compile into one
    clear line."""

    def __init__(self, device_type: str) -> None:
        # a compiled step keeps the thread count it saw rather than tracing a call into torch
        fast_linear.thread_count = torch.compiler.assume_constant_result(fast_linear.thread_count)
        options = {"cpp_wrapper": True} if device_type == "cpu" else {}
        self.step = torch.compile(one_token_step, fullgraph=True, options=options)

    def __call__(
        self,
        model: nn.Module,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: StaticKVCache,
    ) -> torch.Tensor:
        torch._dynamo.mark_dynamic(mask, 3)  # (B, 1, 1, capacity)
        try:
            return self.step(model, tokens, positions, mask, cache)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            text = str(error).strip()
            reason = text.splitlines()[0] if text else type(error).__name__
            raise UserError(
                f"compiling the decoding step failed ({reason}); run without --compile"
            ) from error


def compile_decoding(model: nn.Module) -> nn.Module:
    """Make every later generation with `model` (`Engine`, `generate`, `ChatSession`) decode with
    compiled steps (`model.compiled_decode_step`); compiling happens at the first step of each new
    batch size."""
    family = registry.family_of(model).name
    if family != "gpt":
        raise UserError(f"compiled decoding is for decoder (gpt) models, not {family}")
    model.compiled_decode_step = CompiledDecodeStep(next(model.parameters()).device.type)
    return model
