"""Inference: sampling rules, the KV-cached generation engine (token ids in, token ids out) and the
text-level generation API on top of it, and multi-turn chat sessions."""

from lmforge.infer.chat import ChatSession
from lmforge.infer.engine import Engine
from lmforge.infer.generate import generate, stream
from lmforge.infer.sampling import SamplingParams

__all__ = ["ChatSession", "Engine", "SamplingParams", "generate", "stream"]
