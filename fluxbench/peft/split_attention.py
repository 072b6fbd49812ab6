"""open_clip's ``nn.MultiheadAttention`` rebuilt with explicit q/k/v/out projections.

``nn.MultiheadAttention`` reads its fused ``in_proj_weight`` as a tensor, so a LoRA on it can only be a
weight parametrization that rebuilds the full ``(3d x d)`` update on every call. CoDyRA's code
(``models/codyra.py``) instead replaces each attention with separate ``q_proj``/``k_proj``/``v_proj``/
``out_proj`` Linears (weights copied from ``in_proj``), so that LoRA wraps four ordinary Linears and runs
on activations. :func:`split_attention` does that in place for every block of a tower; the output is the
same function of the input (checked in the tests to float precision).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fluxbench.errors import ConfigError
from fluxbench.peft.sites import find_tower
from fluxbench.peft.wrap import innermost


class SplitAttention(nn.Module):
    """Multi-head self/cross attention with four Linears, called like ``nn.MultiheadAttention``."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ConfigError("split_attention: only plain nn.MultiheadAttention (same q/k/v width, no bias_k, "
                              "no add_zero_attn) can be split")
        d = mha.embed_dim
        self.embed_dim, self.num_heads, self.batch_first = d, mha.num_heads, mha.batch_first
        self.dropout = float(mha.dropout)
        has_bias = mha.in_proj_bias is not None
        w = mha.in_proj_weight.detach()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=has_bias) for _ in range(3))
        self.out_proj = nn.Linear(d, d, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                proj.weight.copy_(w[i * d:(i + 1) * d])
                if has_bias:
                    proj.bias.copy_(mha.in_proj_bias[i * d:(i + 1) * d])
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        self.to(device=w.device, dtype=w.dtype).train(mha.training)
        self.requires_grad_(mha.in_proj_weight.requires_grad)  # a frozen backbone stays frozen

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
                **_: object) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ConfigError("SplitAttention does not return attention weights (open_clip never asks for them)")
        if not self.batch_first:  # (L, N, d) -> (N, L, d)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, _ = query.shape
        heads = self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(n, -1, heads, self.embed_dim // heads).transpose(1, 2)

        q, k, v = split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value))
        mask = _additive_mask(attn_mask, key_padding_mask, n, heads, lq, k.shape[2], q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, self.embed_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _additive_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, n: int, heads: int,
                   lq: int, lk: int, dtype: torch.dtype) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s masks (bool: True = masked; float: added) as one additive SDPA mask."""
    mask = None
    if attn_mask is not None:
        mask = _as_float(attn_mask, dtype)
        if mask.dim() == 3:  # (N * heads, Lq, Lk)
            mask = mask.view(n, heads, lq, lk)
    if key_padding_mask is not None:
        pad = _as_float(key_padding_mask, dtype).view(n, 1, 1, lk)
        mask = pad if mask is None else mask + pad
    return mask


def _as_float(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def split_attention(model: nn.Module, tower: str = "visual") -> int:
    """Replace every block's ``nn.MultiheadAttention`` in ``model``'s ``tower`` by a :class:`SplitAttention`
    (in place); returns how many were replaced (0 when already split)."""
    replaced = 0
    for block in find_tower(model, tower).blocks:
        attn = innermost(block.attn)
        if isinstance(attn, nn.MultiheadAttention):
            if attn is not block.attn:
                raise ConfigError("split_attention: split the attention before attaching PEFT modules to it")
            block.attn = SplitAttention(attn)
            replaced += 1
    return replaced
