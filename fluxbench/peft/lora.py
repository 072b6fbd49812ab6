"""LoRA on chosen linear layers, including single thirds (q, k, v) of a fused qkv projection.

Provenance: LoRA (Hu et al., ICLR 2022, github.com/microsoft/LoRA ``loralib/layers.py``): ``W x +
s * B A x`` with A Kaiming-uniform (a=sqrt 5) and B zero, so a fresh LoRA changes nothing. Options
used by the methods here: LAE's learnable per-target scalar (``scale=None``, github.com/gqk/LAE
``libml/model/pet/lora.py``, LoRA on the K and V thirds of qkv), ViDA's Gaussian init of A
(``init_std``) and externally set scales, CoDyRA's per-rank gates (``gate``, ``ΔW = B diag(w) A``).
What differs: nothing is copied from the libraries. A linear called as a module (timm's ``qkv``,
``proj``, ``fc1``, ``fc2``; open_clip's ``c_fc``, ``c_proj``) is wrapped and the low-rank path is
applied to activations; a weight the library reads as a tensor (open_clip's
``nn.MultiheadAttention.in_proj_weight`` and ``out_proj.weight``) gets a torch parametrization
``W + ΔW`` instead. ``merge()`` adds ΔW into the weight; ``unmerge()`` subtracts it again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from fluxbench.errors import ConfigError
from fluxbench.peft.sites import TARGETS, Attachment, Layout
from fluxbench.peft.wrap import Wrapper, innermost, owner_of, run_all, unwrap


class LoRAPair(nn.Module):
    """One low-rank update ``scale * B diag(gate) A`` for the output rows ``rows`` of a weight."""

    def __init__(
        self,
        in_features: int,
        rows: slice,
        rank: int,
        scale: float | None = 1.0,
        init_std: float | None = None,
        gate: str | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        self.rows = rows
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(rows.stop - rows.start, rank))
        self.scale = nn.Parameter(torch.ones(())) if scale is None else float(scale)
        if gate not in (None, "ones", "normal"):
            raise ConfigError(f"LoRA gate={gate!r}; use null, 'ones' or 'normal'")
        self.gate = None if gate is None else nn.Parameter(torch.empty(rank))
        self.init_std, self.gate_init = init_std, gate
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A fresh update, in place (the same Parameter objects): A Kaiming-uniform (or Gaussian), B = 0, gates
        ones or N(0, 1); a fresh pair contributes exactly nothing, whatever A and the gates are."""
        if self.gate is not None:  # drawn before A, as the pair always drew them
            self.gate.copy_(torch.ones_like(self.gate) if self.gate_init == "ones" else torch.randn_like(self.gate))
        if self.init_std is None:
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        else:
            nn.init.normal_(self.A, std=float(self.init_std))
        self.B.zero_()

    def delta_weight(self) -> torch.Tensor:
        """``scale * B diag(gate) A``: the (rows x in_features) update."""
        b = self.B if self.gate is None else self.B * self.gate
        return (b @ self.A) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.A.dtype) @ self.A.t()
        if self.gate is not None:
            h = h * self.gate
        return ((h @ self.B.t()) * self.scale).to(x.dtype)


class LoRA(nn.Module):
    """The LoRA pairs on one weight, keyed by target name; ``merged`` means ΔW already sits in the weight."""

    def __init__(self, pairs: dict[str, LoRAPair], out_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pairs = nn.ModuleDict(pairs)
        self.out_features = out_features
        self.dropout = nn.Dropout(dropout)
        self.enabled = True
        self.merged = False

    @property
    def active(self) -> bool:
        return self.enabled and not self.merged

    def delta_weight(self) -> torch.Tensor:
        first = next(iter(self.pairs.values()))
        total = first.A.new_zeros(self.out_features, first.A.shape[1])
        for pair in self.pairs.values():
            total[pair.rows] += pair.delta_weight()
        return total

    def delta_output(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        out = None
        for pair in self.pairs.values():
            part = F.pad(pair(x), (pair.rows.start, self.out_features - pair.rows.stop))
            out = part if out is None else out + part
        return out


class LoRALinear(Wrapper):
    """``wrapped(x) + ΔW x`` for a linear called as a module (the low-rank path runs on activations)."""

    def __init__(self, wrapped: nn.Module, lora: LoRA) -> None:
        super().__init__(wrapped)
        self.peft = lora

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.wrapped(x)
        return out + self.peft.delta_output(x) if self.peft.active else out


class LoRAParametrization(nn.Module):
    """``W + ΔW`` as a torch parametrization, for weights the library reads as tensors."""

    def __init__(self, lora: LoRA) -> None:
        super().__init__()
        self.peft = lora

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.peft.active:
            return weight
        return weight + self.peft.delta_weight().to(weight.dtype)


def attach_lora(
    block: nn.Module,
    layout: Layout,
    dim: int,
    targets: Sequence[str] = ("q", "v"),
    rank: int = 8,
    alpha: float | None = None,
    scale: float | None = 1.0,
    dropout: float = 0.0,
    init_std: float | None = None,
    gate: str | None = None,
) -> Attachment:
    """LoRA on ``targets`` of ``block`` (q, k, v, qkv, proj, fc1, fc2), one :class:`LoRA` per weight touched.

    The scale of each update is ``alpha / rank`` when ``alpha`` is given, else ``scale``
    (``None`` = a learnable scalar per target starting at 1, as LAE does).
    """
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ConfigError(f"LoRA targets {list(targets)}: use some of {', '.join(TARGETS)}")
    if alpha is not None:
        scale = float(alpha) / rank
    by_role: dict[str, list[str]] = {}
    for target in targets:  # a split attention has q, k, v as Linears of their own: the target is its role
        by_role.setdefault(target if layout.has(target) else TARGETS[target][0], []).append(target)
    modules, undos, weights = {}, [], {}
    for role, names in by_role.items():
        path, tensor = layout.linear(role)
        weight = _weight(block, path, tensor)
        out_features, in_features = weight.shape
        part = out_features // 3 if role == "qkv" else out_features
        pairs = {}
        for name in names:
            third = None if layout.has(name) else TARGETS[name][1]
            rows = slice(0, out_features) if third is None else slice(third * part, (third + 1) * part)
            pairs[name] = LoRAPair(in_features, rows, rank, scale, init_std, gate)
        lora = LoRA(pairs, out_features, dropout).to(weight.device)
        undos.append(_install(block, path, tensor, lora))
        key = path if tensor is None else f"{path}.{tensor}"
        modules[key] = lora
        weights[key] = functools.partial(base_weight, block, path, tensor)

    return Attachment(modules, functools.partial(run_all, undos), weights)


def merge(lora: LoRA, weight: torch.Tensor, sign: float) -> None:
    """Add (``sign=1``) or subtract (``sign=-1``) ``lora``'s ΔW into ``weight`` in place, in float32."""
    with torch.no_grad():
        delta = lora.delta_weight().float() * sign
        weight.copy_((weight.float() + delta).to(weight.dtype))


def base_weight(block: nn.Module, path: str, tensor: str | None) -> torch.Tensor:
    """The stored weight that a merge writes into (the parametrization's original, or the Linear's weight)."""
    owner, name = owner_of(block, path)
    module = innermost(getattr(owner, name))
    attr = tensor or "weight"
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


def _weight(block: nn.Module, path: str, tensor: str | None) -> torch.Tensor:
    owner, name = owner_of(block, path)
    module = innermost(getattr(owner, name))
    if tensor is None and not isinstance(module, nn.Linear):
        raise ConfigError(f"LoRA target {path} is a {type(module).__name__}, not a Linear")
    return getattr(module, tensor or "weight")


def _install(block: nn.Module, path: str, tensor: str | None, lora: LoRA) -> Callable[[], None]:
    owner, name = owner_of(block, path)
    if tensor is None:
        wrapper = LoRALinear(getattr(owner, name), lora).train(getattr(owner, name).training)
        setattr(owner, name, wrapper)
        return functools.partial(unwrap, block, wrapper)
    module = innermost(getattr(owner, name))
    param = LoRAParametrization(lora).train(module.training)
    parametrize.register_parametrization(module, tensor, param)
    return functools.partial(_remove_parametrization, module, tensor, param)


def _remove_parametrization(module: nn.Module, tensor: str, param: LoRAParametrization) -> None:
    plist = module.parametrizations[tensor]
    if len(plist) == 1:
        parametrize.remove_parametrizations(module, tensor, leave_parametrized=False)
        return
    for i, p in enumerate(plist):
        if p is param:
            del plist[i]
            return
