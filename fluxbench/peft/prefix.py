"""Prefix tuning: learned key/value tokens prepended inside each chosen attention layer.

Provenance: prefix tuning (Li & Liang, ACL 2021) as LAE uses it (github.com/gqk/LAE,
``libml/model/pet/prefix.py``): ``length`` key and ``length`` value tokens per layer, drawn from
U(0, 0.01), each set multiplied by a scalar (learnable when ``key_scale``/``value_scale`` is None),
and LAE's *compensatory* option: after the softmax, the attention mass a query puts on the prefix
keys (lambda) is divided out of the prefix block, so the output is ``(1 - lambda) * Attn_orig +
Attn_prefix_normalised``. What differs: no library attention is copied. The wrapper computes the
attention from the wrapped module's own projections (timm's ``qkv``/``q_norm``/``k_norm``/``proj``,
or ``nn.MultiheadAttention``'s ``in_proj_weight``/``out_proj``), so a LoRA on those weights still
applies; only the softmax step, which must see the extra keys, is written here. The position of the
prefix among the keys does not matter (attention is permutation-invariant over keys).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from fluxbench.errors import ConfigError
from fluxbench.peft.sites import Attachment, Layout
from fluxbench.peft.wrap import Wrapper, owner_of, unwrap


class Prefix(nn.Module):
    """``length`` key and value tokens of width ``dim`` and their two scalars."""

    def __init__(
        self,
        dim: int,
        length: int = 10,
        key_scale: float | None = 1.0,
        value_scale: float | None = 1.0,
        compensatory: bool = False,
        init_range: float = 0.01,
    ) -> None:
        super().__init__()
        if length < 1:
            raise ConfigError(f"prefix length must be >= 1, got {length}")
        self.keys = nn.Parameter(torch.empty(length, dim).uniform_(0.0, init_range))
        self.values = nn.Parameter(torch.empty(length, dim).uniform_(0.0, init_range))
        self.key_scale = nn.Parameter(torch.ones(())) if key_scale is None else float(key_scale)
        self.value_scale = nn.Parameter(torch.ones(())) if value_scale is None else float(value_scale)
        self.compensatory = bool(compensatory)
        self.enabled = True

    def heads(self, num_heads: int, head_dim: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values split into heads: (batch, heads, length, head_dim) each."""
        length = self.keys.shape[0]
        k = (self.keys * self.key_scale).view(length, num_heads, head_dim).transpose(0, 1)
        v = (self.values * self.value_scale).view(length, num_heads, head_dim).transpose(0, 1)
        return k.unsqueeze(0).expand(batch, -1, -1, -1), v.unsqueeze(0).expand(batch, -1, -1, -1)


def prefix_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prefix: Prefix,
    scale: float,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Attention of ``q`` over ``[prefix keys; k]``; all tensors (batch, heads, tokens, head_dim).

    ``mask`` (bool: True = attend, or additive float) covers the original keys only; prefix keys
    are visible to every query.
    """
    batch, heads, _, head_dim = q.shape
    pk, pv = prefix.heads(heads, head_dim, batch)
    pk, pv = pk.to(k.dtype), pv.to(v.dtype)
    length = pk.shape[2]
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        mask = F.pad(mask.to(q.dtype), (length, 0))
    keys, values = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    if not prefix.compensatory:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout, scale=scale)
    scores = (q * scale) @ keys.transpose(-2, -1)
    if mask is not None:
        scores = scores + mask
    attn = scores.softmax(dim=-1)
    mass = attn[..., :length].sum(dim=-1, keepdim=True)
    attn = torch.cat([attn[..., :length] / mass, attn[..., length:]], dim=-1)
    attn = F.dropout(attn, p=dropout, training=dropout > 0)
    return attn @ values


class TimmPrefixAttention(Wrapper):
    """timm ``Attention`` with prefix keys/values; everything but the softmax uses the module's own parts."""

    def __init__(self, wrapped: nn.Module, prefix: Prefix) -> None:
        super().__init__(wrapped)
        self.peft = prefix

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        a = self.wrapped
        if not self.peft.enabled:
            return a(x, attn_mask=attn_mask, is_causal=is_causal)
        batch, tokens, _ = x.shape
        gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
        qkv = a.qkv(x).reshape(batch, tokens, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        if is_causal:
            attn_mask = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril_()
        dropout = a.attn_drop.p if self.training else 0.0
        out = prefix_attention(q, k, v, self.peft, a.scale, attn_mask, dropout)
        out = a.norm(out.transpose(1, 2).reshape(batch, tokens, a.num_heads * a.head_dim))
        if gate is not None:
            out = out * gate
        return a.proj_drop(a.proj(out))


class MultiheadPrefixAttention(Wrapper):
    """``nn.MultiheadAttention`` (open_clip) with prefix keys/values, from its own projection weights."""

    def __init__(self, wrapped: nn.MultiheadAttention, prefix: Prefix) -> None:
        super().__init__(wrapped)
        self.peft = prefix

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        m = self.wrapped
        if not self.peft.enabled:
            return m(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                     attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        if key_padding_mask is not None:
            raise ConfigError("prefix tuning on nn.MultiheadAttention does not support key_padding_mask")
        key = query if key is None else key
        value = query if value is None else value
        if not m.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        w, b = m.in_proj_weight, m.in_proj_bias
        q, k, v = (self._heads(F.linear(t, wi, bi)) for t, wi, bi in zip(
            (query, key, value), w.chunk(3), b.chunk(3) if b is not None else (None,) * 3))
        mask = self._mask(attn_mask, q, is_causal)
        dropout = m.dropout if self.training else 0.0
        out = prefix_attention(q, k, v, self.peft, m.head_dim ** -0.5, mask, dropout)
        out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], m.embed_dim)
        out = F.linear(out, m.out_proj.weight, m.out_proj.bias)
        return (out if m.batch_first else out.transpose(0, 1)), None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        m = self.wrapped
        return t.view(t.shape[0], t.shape[1], m.num_heads, m.head_dim).transpose(1, 2)

    def _mask(self, mask: torch.Tensor | None, q: torch.Tensor, is_causal: bool) -> torch.Tensor | None:
        batch, heads, tokens = q.shape[:3]
        if mask is None and is_causal:
            mask = torch.ones(tokens, tokens, dtype=torch.bool, device=q.device).tril_()
        elif mask is not None and mask.dtype == torch.bool:
            mask = ~mask  # nn.MultiheadAttention: True = masked out; prefix_attention: True = attend
        if mask is not None and mask.dim() == 3:  # (batch * heads, tokens, tokens)
            mask = mask.view(batch, heads, tokens, -1)
        return mask


def attach_prefix(
    block: nn.Module,
    layout: Layout,
    dim: int,
    length: int = 10,
    key_scale: float | None = 1.0,
    value_scale: float | None = 1.0,
    compensatory: bool = False,
    init_range: float = 0.01,
) -> Attachment:
    """Prefix keys/values in ``block``'s attention (wrapping the library attention module itself)."""
    prefix = Prefix(dim, length, key_scale, value_scale, compensatory, init_range)
    owner, name = owner_of(block, layout.attn, through_wrappers=True)
    attn = getattr(owner, name)
    cls = TimmPrefixAttention if layout.library == "timm" else MultiheadPrefixAttention
    wrapper = cls(attn, prefix.to(next(attn.parameters()).device)).train(attn.training)
    setattr(owner, name, wrapper)
    return Attachment({layout.attn: prefix}, functools.partial(unwrap, block, wrapper))
