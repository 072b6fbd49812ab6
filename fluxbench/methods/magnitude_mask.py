"""Per-step output magnitudes of every linear layer, and the gradient-row masks MIGU derives from them.

A :class:`MagnitudeTracker` puts forward hooks on a model. Each hooked weight is a :class:`Site`: during
the forward passes of one optimiser step the hook adds ``sum over tokens |y[t, j]|`` to the site's
vector of length d_out (so micro-batches accumulate), and :meth:`MagnitudeTracker.mask_gradients`
then zeroes the gradient rows below the per-layer quantile ``q`` and empties every vector.

``nn.MultiheadAttention`` reads ``in_proj_weight`` and ``out_proj.weight`` as tensors
(``F.multi_head_attention_forward``), so hooks on its ``out_proj`` never fire. The tracker hooks the
attention module itself instead: the in-projection magnitudes are recomputed from its inputs
(``|x W_in^T + b|``) and the out-projection's are those of the module's output, which *is*
``out_proj``'s output (specs/migu.md section 5, pitfall 1, option b). A LoRA-wrapped linear
(:class:`~fluxbench.peft.lora.LoRALinear`) is one site for the rows of its ``B`` matrices (the combined
output's units) and one per ``A`` (its rank units); its frozen base weight is not hooked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from fluxbench.peft.lora import LoRALinear
from fluxbench.peft.wrap import innermost

SELECTIONS = ("magnitude", "random")


@dataclass
class Site:
    """One vector of output units and the tensors whose gradient rows follow it.

    ``targets`` pairs a parameter with the units its rows belong to: a Linear's weight is
    ``(weight, all units)``; a LoRA ``B`` on the q third of a fused qkv is ``(B, slice(0, d))`` of the combined
    layer's units. ``groups`` > 1 takes one quantile per equal slice of units (q, k, v of a fused qkv).
    """

    name: str
    units: int
    targets: list[tuple[nn.Parameter, slice]]
    groups: int = 1
    magnitude: torch.Tensor | None = field(default=None, repr=False)

    @property
    def weight(self) -> nn.Parameter:
        return self.targets[0][0]

    def add(self, y: torch.Tensor, offset: int = 0) -> None:
        """Add ``sum over all tokens |y|`` (last dim: output units) to units ``offset:offset + y.shape[-1]``."""
        m = y.detach().abs().float().reshape(-1, y.shape[-1]).sum(0)
        if self.magnitude is None:
            self.magnitude = torch.zeros(self.units, device=m.device)
        self.magnitude[offset:offset + m.numel()] += m


def keep_rows(magnitude: torch.Tensor, q: float, groups: int = 1, selection: str = "magnitude") -> torch.Tensor:
    """Rows that keep their gradient: ``>= quantile(q)`` per group, or a random ``(1 - q)`` share of each group."""
    keep = []
    for part in magnitude.chunk(groups):
        if selection == "random":  # the code's random_update: int(q * d) rows masked at random
            k = torch.ones(part.numel(), dtype=torch.bool, device=part.device)
            k[torch.randperm(part.numel())[: int(q * part.numel())].to(part.device)] = False
        else:
            k = part >= torch.quantile(part, q)
        keep.append(k)
    return torch.cat(keep)


class MagnitudeTracker:
    """Forward hooks on the linear layers of ``model`` (minus ``exclude``d module names and their children).

    Linears frozen when the tracker is built have nothing to mask and are not hooked.
    """

    def __init__(self, model: nn.Module, exclude: Iterable[str] = (), split_qkv: bool = False) -> None:
        self.sites: dict[str, Site] = {}
        self.active = False  # accumulate only while masking is on, in training forwards with grad
        self._handles = []
        exclude = tuple(exclude)
        covered: set[int] = set()  # linears measured through their owner (MHA's out_proj, a LoRA-wrapped base)
        for name, module in model.named_modules():
            if any(name == e or name.startswith(e + ".") for e in exclude):
                continue
            if isinstance(module, nn.MultiheadAttention):
                covered.add(id(module.out_proj))
                self._hook_mha(name, module, split_qkv)
            elif isinstance(module, LoRALinear):
                covered.add(id(innermost(module)))
                self._hook_lora(name, module, 3 if split_qkv and name.rsplit(".", 1)[-1] == "qkv" else 1)
            elif isinstance(module, nn.Linear) and id(module) not in covered and module.weight.requires_grad:
                groups = 3 if split_qkv and name.rsplit(".", 1)[-1] == "qkv" else 1
                site = self._site(name, module.weight, groups)
                self._handles.append(module.register_forward_hook(self._linear_hook(site)))

    def _site(self, name: str, weight: nn.Parameter, groups: int = 1) -> Site:
        self.sites[name] = Site(name, weight.shape[0], [(weight, slice(None))], groups)
        return self.sites[name]

    def _recording(self, module: nn.Module) -> bool:
        return self.active and module.training and torch.is_grad_enabled()

    def _linear_hook(self, site: Site):
        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            if self._recording(module):
                site.add(output)

        return hook

    def _hook_mha(self, name: str, mha: nn.MultiheadAttention, split_qkv: bool) -> None:
        d = mha.embed_dim
        # (site, weight, first row of q / k / v in that weight): one fused weight, or three when kdim/vdim != d
        if mha.in_proj_weight is not None:
            fused = self._site(f"{name}.in_proj", mha.in_proj_weight, 3 if split_qkv else 1)
            inputs = [(fused, mha.in_proj_weight, i * d) for i in range(3)]
        else:
            inputs = [(self._site(f"{name}.{p}_proj", getattr(mha, f"{p}_proj_weight")),
                       getattr(mha, f"{p}_proj_weight"), 0) for p in "qkv"]
        out = self._site(f"{name}.out_proj", mha.out_proj.weight)

        def hook(module: nn.MultiheadAttention, args, kwargs, output) -> None:
            if not self._recording(module):
                return
            qkv = list(args[:3]) + [kwargs[k] for k in ("query", "key", "value")[len(args):]]
            with torch.no_grad():
                for i, ((site, weight, row), x) in enumerate(zip(inputs, qkv)):
                    bias = None if module.in_proj_bias is None else module.in_proj_bias[i * d:(i + 1) * d]
                    site.add(F.linear(x, weight[row:row + d], bias), row)
            out.add(output[0])

        self._handles.append(mha.register_forward_hook(hook, with_kwargs=True))

    def _hook_lora(self, name: str, wrapper: LoRALinear, groups: int) -> None:
        """specs/migu.md section 4 (a harness decision): rows of each ``B`` follow the combined base + LoRA
        output of the layer, rows of each ``A`` (rank units) follow ``A``'s own output."""
        lora = wrapper.peft
        b_site = Site(f"{name}.lora_B", lora.out_features, [(p.B, p.rows) for p in lora.pairs.values()], groups)
        self.sites[b_site.name] = b_site

        def combined(module: nn.Module, args, output: torch.Tensor) -> None:
            if self._recording(module):
                b_site.add(output)

        self._handles.append(wrapper.register_forward_hook(combined))
        for key, pair in lora.pairs.items():
            a_site = self._site(f"{name}.lora_A.{key}", pair.A)

            def rank_units(module: nn.Module, args, output, site: Site = a_site) -> None:
                if self._recording(module):
                    with torch.no_grad():
                        site.add(F.linear(args[0].to(module.A.dtype), module.A))

            self._handles.append(pair.register_forward_hook(rank_units))

    def fired(self) -> list[str]:
        """The sites whose hooks recorded something since the last reset (hook coverage)."""
        return sorted(n for n, s in self.sites.items() if s.magnitude is not None)

    def reset(self) -> None:
        for site in self.sites.values():
            site.magnitude = None

    @torch.no_grad()
    def mask_gradients(self, q: float, selection: str = "magnitude") -> dict[str, torch.Tensor]:
        """Zero the gradient rows below the quantile at every site that fired; the kept rows per site.

        Biases are untouched. The accumulators are emptied: the next step computes its own mask.
        """
        kept = {}
        for site in self.sites.values():
            if site.magnitude is None:
                continue
            kept[site.name] = keep = keep_rows(site.magnitude, q, site.groups, selection)
            for param, rows in self.targets(site, keep):
                if param.grad is not None:
                    param.grad.masked_fill_(~rows.view(-1, *([1] * (param.dim() - 1))), 0)
        self.reset()
        return kept

    def targets(self, site: Site, keep: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """``(parameter, its rows that keep their update)`` for every tensor of ``site``."""
        return [(param, keep[units]) for param, units in site.targets]

    def hold_masked(self, kept: dict[str, torch.Tensor]) -> list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]:
        """``(weight, masked rows, their values)`` before an optimiser step, for :func:`restore` after it (the
        strict variant: momentum and weight decay would otherwise keep moving the masked rows)."""
        return [(w, ~keep, w.detach()[~keep].clone()) for name, k in kept.items()
                for w, keep in self.targets(self.sites[name], k)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@torch.no_grad()
def restore(held: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]) -> None:
    """Put the rows :meth:`MagnitudeTracker.hold_masked` recorded back where they were."""
    for weight, rows, values in held:
        weight[rows] = values
