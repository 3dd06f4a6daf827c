"""T5's relative position bias: a learned scalar per head and per bucket of key-query distance.

Raffel et al., 2020 ("Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", section 2.1) replace position embeddings by a bias added to the attention logits,

    score(i, j) = q_i . k_j + b_h(bucket(j - i)),

where bucket() maps a relative position to one of `num_buckets` classes: half of them are exact
distances 0 .. n/2 - 1, the other half cover distances up to `max_distance` in logarithmically
growing ranges, and everything farther shares the last bucket. Encoders are bidirectional (half the
buckets for keys before the query, half for keys after it); decoders look only backwards, so all
buckets go to distances into the past. The formula is the reference one (Mesh TensorFlow's
`_relative_position_bucket`, also in Hugging Face's T5), floating-point steps included, so the
buckets match pretrained checkpoints exactly.

The bias is computed once per stack (in T5: by the first layer) and shared by all its layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """Bucket ids in [0, num_buckets) of integer relative positions (key - query), any shape."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets  # keys after the query
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)  # keys after the query count as 0
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log-spaced buckets from max_exact to max_distance (the clamp only avoids log(0), which the
    # `where` below discards anyway)
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(
        max_distance / max_exact
    )
    if_large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    if_large = torch.clamp(if_large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, if_large)


class RelativePositionBias(nn.Module):
    """Learned bias per (bucket, head): `weight` of shape (num_buckets, num_heads)."""

    def __init__(
        self, num_buckets: int, max_distance: int, num_heads: int, bidirectional: bool
    ) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.weight = nn.Parameter(torch.zeros(num_buckets, num_heads))

    def forward(self, query_length: int, key_length: int, offset: int = 0) -> torch.Tensor:
        """Bias (1, H, T, S) for queries at positions offset .. offset + T - 1 and keys 0 .. S - 1."""
        device = self.weight.device
        query = torch.arange(offset, offset + query_length, device=device)[:, None]  # (T, 1)
        key = torch.arange(key_length, device=device)[None, :]  # (1, S)
        buckets = relative_position_bucket(
            key - query, self.bidirectional, self.num_buckets, self.max_distance
        )  # (T, S)
        values = F.embedding(buckets, self.weight)  # (T, S, H)
        return values.permute(2, 0, 1).unsqueeze(0)  # (1, H, T, S)
