"""Parallel bottleneck adapters (AdaptFormer style), attached beside a block's MLP or attention.

Provenance: AdaptFormer (Chen et al., NeurIPS 2022, github.com/ShoufaChen/AdaptFormer), as MOS
(github.com/sun-hailong/AAAI25-MOS, ``backbone/vit_mos.py``) and LAE (github.com/gqk/LAE,
``libml/model/pet/adapter.py``) use it: ``scale * Up(Drop(Act(Down(h))))`` added to the output of
the sub-layer it sits beside. Down is Kaiming-uniform (a=sqrt 5) with zero bias, Up is all zeros,
so a fresh adapter changes nothing. What differs: the upstream code edits the ViT's Block; here
the library Block is untouched and the sub-layer is wrapped instead. Where the adapter reads the
residual stream (MOS: ``x`` after the attention add, not ``LN2(x)``), the block's norm is moved
into the wrapper and replaced by an identity, so the Block's own ``x + mlp(norm2(x))`` line
computes ``x + mlp(norm2(x)) + adapter(x)``. A LayerScale on that branch (none in ViT-B) would
also scale the adapter.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from fluxbench.errors import ConfigError
from fluxbench.peft.sites import Attachment, Layout
from fluxbench.peft.wrap import Wrapper, owner_of, replace_ref, unwrap

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "identity": nn.Identity}


class Bottleneck(nn.Module):
    """``scale * up(dropout(act(down(h))))``; ``scale=None`` makes it a learnable scalar starting at 1."""

    def __init__(
        self, dim: int, bottleneck: int, scale: float | None = 0.1, dropout: float = 0.0, act: str = "relu"
    ) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ConfigError(f"adapter act={act!r} is unknown; use one of {', '.join(ACTIVATIONS)}")
        if bottleneck < 1:
            raise ConfigError(f"adapter bottleneck must be >= 1, got {bottleneck}")
        self.down = nn.Linear(dim, bottleneck)
        self.act = ACTIVATIONS[act]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        if scale is None:
            self.scale = nn.Parameter(torch.ones(()))
        else:
            self.scale = float(scale)
        self.enabled = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        if isinstance(self.scale, nn.Parameter):
            with torch.no_grad():
                self.scale.fill_(1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.up(self.dropout(self.act(self.down(h.to(self.down.weight.dtype))))) * self.scale
        return out.to(h.dtype)


class ParallelAdapter(Wrapper):
    """``wrapped(*args) + adapter(input)``; with ``pre_norm`` the input is the raw residual stream.

    ``pre_norm`` is the block's norm moved in here (the block sees an identity in its place):
    the wrapped sub-layer gets ``pre_norm(x)`` as before and the adapter gets ``x``.
    """

    def __init__(self, wrapped: nn.Module, adapter: Bottleneck, pre_norm: nn.Module | None = None) -> None:
        super().__init__(wrapped)
        self.peft = adapter
        self.peft_norm = pre_norm

    def forward(self, x: torch.Tensor, *args, **kwargs):
        h = x if self.peft_norm is None else self.peft_norm(x)
        # open_clip passes q, k, v separately (the same tensor for self-attention): normalise each alike
        args = tuple(h if a is x else a for a in args)
        out = self.wrapped(h, *args, **kwargs)
        if not self.peft.enabled:
            return out
        delta = self.peft(x)
        if isinstance(out, tuple):  # nn.MultiheadAttention returns (output, weights)
            return (out[0] + delta, *out[1:])
        return out + delta


def attach_adapter(
    block: nn.Module,
    layout: Layout,
    dim: int,
    bottleneck: int = 16,
    scale: float | None = 0.1,
    dropout: float = 0.1,
    act: str = "relu",
    position: str = "mlp",
    input: str = "residual",  # noqa: A002 - the config key users write
) -> Attachment:
    """Put one adapter beside ``block``'s MLP or attention; returns its module and the undo function.

    ``position``: "mlp" (AdaptFormer, MOS) or "attn" (LAE). ``input``: "residual" (the stream ``x``
    before the sub-layer's norm; MOS) or "normed" (the norm's output, i.e. the sub-layer's own input; LAE).
    """
    if position not in ("mlp", "attn"):
        raise ConfigError(f"adapter position={position!r}; use 'mlp' or 'attn'")
    if input not in ("residual", "normed"):
        raise ConfigError(f"adapter input={input!r}; use 'residual' or 'normed'")
    adapter = Bottleneck(dim, bottleneck, scale, dropout, act).to(next(block.parameters()).device)
    target = layout.mlp if position == "mlp" else layout.attn
    norm_name = layout.norm2 if position == "mlp" else layout.norm1
    owner, name = owner_of(block, target)
    sublayer = getattr(owner, name)
    norm = identity = None
    if input == "residual":
        norm, identity = getattr(block, norm_name), nn.Identity()
        setattr(block, norm_name, identity)
    wrapper = ParallelAdapter(sublayer, adapter, norm).train(sublayer.training)
    setattr(owner, name, wrapper)

    return Attachment({target: adapter}, functools.partial(_undo, block, wrapper, identity))


def _undo(block: nn.Module, wrapper: ParallelAdapter, identity: nn.Module | None) -> None:
    unwrap(block, wrapper)
    if identity is not None:
        replace_ref(block, identity, wrapper.peft_norm)
