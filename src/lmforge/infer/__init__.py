"""Inference: sampling rules, the KV-cached generation engine (token ids in, token ids out) and the
text-level generation API on top of it, multi-turn chat sessions, and compiled decoding steps."""

from lmforge.infer.chat import ChatSession
from lmforge.infer.compiled import compile_decoding
from lmforge.infer.engine import Engine
from lmforge.infer.generate import generate, stream
from lmforge.infer.sampling import SamplingParams

__all__ = [
    "ChatSession",
    "Engine",
    "SamplingParams",
    "compile_decoding",
    "generate",
    "stream",
]
