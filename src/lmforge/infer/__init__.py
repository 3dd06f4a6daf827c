"""Inference: sampling rules, the KV-cached generation engine (token ids in, token ids out) and the
text-level generation API on top of it."""

from lmforge.infer.engine import Engine
from lmforge.infer.generate import generate, stream
from lmforge.infer.sampling import SamplingParams

__all__ = ["Engine", "SamplingParams", "generate", "stream"]
