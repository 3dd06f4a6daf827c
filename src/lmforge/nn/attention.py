"""Multi-head attention with grouped-query heads and a preallocated KV cache.

Attention(Q, K, V) = softmax(s Q K^T + B + M) V   (Vaswani et al., 2017, eq. 1: s = 1 / sqrt(d))

- Grouped-query attention (Ainslie et al., 2023): `num_kv_heads` key/value heads are shared by groups
  of `num_heads / num_kv_heads` query heads; `num_kv_heads == num_heads` is ordinary multi-head
  attention, `num_kv_heads == 1` is multi-query attention. For a single new token (decoding) the
  query heads of a group are stacked as queries of their key/value head, so the cached keys and
  values are read in place; otherwise they are repeated for each query head.
- The kernel is `torch.nn.functional.scaled_dot_product_attention`, which picks a fused
  (flash / memory-efficient) implementation for the device.
- The same block serves causal self-attention (decoders), bidirectional self-attention (encoders)
  and cross-attention (encoder-decoders: keys and values from another sequence, `kv_input`, or
  projected once by `project_kv` and passed as `kv` at every decoding step).
- An additive float bias B of shape (B or 1, H, T, S) is added to the scores: T5's relative
  position bias (Raffel et al., 2020, section 2.1). A boolean mask M is folded into it as a large
  negative number (`attention_bias`), so padding and causality combine with the bias.
- `scale` is s; None means 1 / sqrt(head_dim). T5 uses 1.0 (its initialisation absorbs the scale).
- `KVCache` holds keys and values of earlier positions in tensors allocated once for the whole
  generation, so decoding a token writes one slot per layer instead of concatenating.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.nn.fused import fused_projection, fused_projections
from lmforge.nn.rope import apply_rotary


class KVCache:
    """Keys and values of every layer for `batch_size` sequences of up to `max_len` positions."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # positions filled so far (the same for every layer once a step is done)
        self._split_layers()

    def _split_layers(self) -> None:
        # per-layer views made once: a decoding step then costs two copies and two narrows a layer
        self.layer_keys = [self.keys[i] for i in range(self.keys.size(0))]
        self.layer_values = [self.values[i] for i in range(self.values.size(0))]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v of shape (B, Hkv, T, D) after the filled positions; return all of them."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        keys, values = self.layer_keys[layer], self.layer_values[layer]  # (B, Hkv, max_len, D)
        keys.narrow(2, start, end - start).copy_(k)
        values.narrow(2, start, end - start).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)  # (B, Hkv, S, D)

    def advance(self, num_positions: int) -> None:
        """Mark `num_positions` more positions as filled (called once per forward pass)."""
        self.length += num_positions

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the sequences `index` (for beam search or dropping finished rows)."""
        self.keys = self.keys[:, index]
        self.values = self.values[:, index]
        self._split_layers()


class StaticKVCache(KVCache):
    """A KVCache whose one-token steps keep the same shapes, for compiled decoding (infer/compiled.py).

    A one-token step writes at `slot`, a (1,) tensor holding the number of positions filled, and
    returns all `max_len` positions, written or not: the caller's mask hides the ones not written
    yet. Counting in a tensor lets a compiled step advance the cache without a Python number that
    would change the graph each step, and `max_len` is marked dynamic, so caches of any capacity
    share one graph. Several tokens at once (the prefill) take the ordinary path.
    """

    def _split_layers(self) -> None:
        super()._split_layers()
        for layer in (*self.layer_keys, *self.layer_values):  # (B, Hkv, max_len, D)
            torch._dynamo.mark_dynamic(layer, 2)  # one compiled graph for every capacity

    @property
    def length(self) -> int:  # type: ignore[override]
        return int(self.slot)

    @length.setter
    def length(self, value: int) -> None:  # KVCache.__init__ sets it to 0
        self.slot = torch.full((1,), value, dtype=torch.long, device=self.keys.device)  # (1,)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token (T == 1): store k, v of shape (B, Hkv, 1, D) at `slot`; return every position,
        (B, Hkv, max_len, D), for the caller's mask to hide those after `slot`. Several tokens: as
        `KVCache.update`."""
        if k.size(2) != 1:
            return super().update(layer, k, v)
        keys, values = self.layer_keys[layer], self.layer_values[layer]  # (B, Hkv, max_len, D)
        keys.index_copy_(2, self.slot, k)
        values.index_copy_(2, self.slot, v)
        return keys, values

    def advance(self, num_positions: int) -> None:
        self.slot.add_(num_positions)


def attention_bias(bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The float bias (B or 1, H, T, S) with the positions a boolean mask forbids (False) set to
    the dtype's lowest value, for use as one additive attention mask. mask: (B, 1, T, S), (B, 1,
    1, S) or (T, S); None returns the bias as it is."""
    if mask is None:
        return bias
    lowest = torch.tensor(torch.finfo(bias.dtype).min, dtype=bias.dtype, device=bias.device)
    return torch.where(mask, bias, lowest)  # (B or 1, H, T, S)


class Attention(nn.Module):
    projection_groups = (("q_proj", "k_proj", "v_proj"),)  # one input: see nn/fused.py

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.head_dim = head_dim or hidden_size // num_heads
        if num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=bias)
        self.dropout = dropout
        self.scale = scale  # None: 1 / sqrt(head_dim)

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = True,
        cache: KVCache | None = None,
        layer_index: int = 0,
        kv_input: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Self-attention over x of shape (B, T, C), or cross-attention from x to another sequence.

        mask: optional boolean (B, 1, T, S) or (T, S), True where a query may attend to a key; S is
        the number of keys (cached + new). Without a mask, `causal` selects a lower-triangular mask
        aligned to the end of the keys (so it also holds when a cache precedes the new tokens).
        kv_input: (B, S, C), the sequence keys and values come from (cross-attention: no causal
        mask, no cache, no rotation); or `kv`, its keys and values already projected by
        `project_kv`, each (B, Hkv, S, D).
        bias: float (B or 1, H, T, S) added to the scores; a mask or `causal` still applies.
        """
        B, T, _ = x.shape
        if kv_input is not None or kv is not None:
            k, v = kv if kv is not None else self.project_kv(kv_input)  # (B, Hkv, S, D) each
            q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)  # (B, T, H, D)
            y = self._attend(q.transpose(1, 2), k, v, mask, False, bias)  # (B, H, T, D)
            y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # (B, T, H*D)
            return self.o_proj(y)
        H, Hkv = self.num_heads, self.num_kv_heads
        qkv = fused_projection(x, [self.q_proj, self.k_proj, self.v_proj])  # (B, T, (H+2Hkv)*D)
        qkv = qkv.view(B, T, H + 2 * Hkv, self.head_dim).transpose(1, 2)  # (B, H+2Hkv, T, D)
        qk, v = qkv.split([H + Hkv, Hkv], dim=1)  # (B, H+Hkv, T, D), (B, Hkv, T, D)
        if rope is not None:
            qk = apply_rotary(qk, *rope)  # queries and keys rotated together
        q, k = qk.split([H, Hkv], dim=1)  # (B, H, T, D), (B, Hkv, T, D)
        if cache is not None:
            k, v = cache.update(layer_index, k, v)  # (B, Hkv, S, D)
        y = self._attend(q, k, v, mask, causal, bias)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # (B, T, H*D)
        return self.o_proj(y)

    def project_kv(self, kv_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a sequence (B, S, C) for cross-attention, each (B, Hkv, S, D)."""
        B, S, _ = kv_input.shape
        k, v = fused_projections(kv_input, [self.k_proj, self.v_proj])
        k = k.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, S, D)
        v = v.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, S, D)
        return k, v

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        T, S = q.size(2), k.size(2)
        is_causal = False
        if bias is not None:  # one float mask: the bias, -inf-like where the mask forbids
            if mask is None and causal and T > 1:
                mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
            mask, causal = attention_bias(bias.to(q.dtype), mask), False
        if mask is None and causal and T > 1:
            if T == S:
                is_causal = True  # the fused kernels' own causal mask
            else:  # new tokens after S - T cached ones: query i sees keys up to S - T + i
                mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        if self.num_kv_heads != self.num_heads:
            groups = self.num_heads // self.num_kv_heads
            if T == 1:  # decoding: the G query heads of a group become G queries of its kv head
                B, D = q.size(0), q.size(-1)
                q = q.reshape(B, self.num_kv_heads, groups, D)  # (B, Hkv, G, D)
                if mask is not None and mask.dim() == 4 and mask.size(1) == self.num_heads:
                    mask = mask.reshape(mask.size(0), self.num_kv_heads, groups, S)  # per head
                dropout = self.dropout if self.training else 0.0
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale
                )
                # y: (B, Hkv, G, D)
                return y.reshape(B, self.num_heads, 1, D)  # (B, H, 1, D)
            k = k.repeat_interleave(groups, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(groups, dim=1)  # (B, H, S, D)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            scale=self.scale,
        )
