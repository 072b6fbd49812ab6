"""The one API for parameter-efficient modules: attach, train, snapshot, average, merge, detach.

``attach(model, kind, blocks=..., **cfg)`` puts one set of modules of ``kind`` ("adapter", "lora",
"prefix", "prompt") into the chosen blocks of a timm ViT, a :class:`FeatureBackbone`, or an
open_clip visual or text tower, and returns a :class:`PeftHandle`. Methods build their optimizer
over ``handle.parameters()``, keep per-task sets as ``handle.state()`` snapshots, run the backbone
with another set through ``with handle.using(state):`` (MOS's per-task adapters, LAE's offline
expert), average or EMA snapshots with :func:`average` / :func:`ema_`, fold LoRA into the weights
with ``merge()`` and remove everything with ``detach()``; ``clone_with(model)`` copies the model
and the handle together (mean teachers). Freezing the backbone is the method's call
(``backbone.requires_grad_(False)`` before attaching); attached modules start trainable and in the
host's train/eval mode.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fluxbench.errors import ConfigError
from fluxbench.peft.adapter import attach_adapter
from fluxbench.peft.lora import LoRA, attach_lora, merge
from fluxbench.peft.prefix import attach_prefix
from fluxbench.peft.prompt import attach_prompts
from fluxbench.peft.sites import Attachment, Tower, find_tower, select_blocks
from fluxbench.peft.wrap import innermost

State = dict[str, torch.Tensor]
_PER_BLOCK: dict[str, Callable[..., Attachment]] = {
    "adapter": attach_adapter, "lora": attach_lora, "prefix": attach_prefix,
}
KINDS = (*_PER_BLOCK, "prompt")


class PeftHandle:
    """One attached set of PEFT modules, named ``<tower>.<block>.<site>``."""

    def __init__(self, kind: str, attachments: dict[str, Attachment]) -> None:
        self.kind = kind
        self.modules: dict[str, nn.Module] = {}
        self._weights: dict[str, Callable[[], torch.Tensor]] = {}
        self._undo = [a.undo for a in attachments.values()]
        for prefix, att in attachments.items():
            for site, module in att.modules.items():
                self.modules[f"{prefix}.{site}"] = module
            for site, fn in att.weights.items():
                self._weights[f"{prefix}.{site}"] = fn
        self.attached = True
        self.merged = False

    # parameters -------------------------------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, module in self.modules.items():
            for pname, param in module.named_parameters():
                yield f"{name}.{pname}", param

    def parameters(self) -> Iterator[nn.Parameter]:
        """The attached modules' parameters (all trainable unless ``requires_grad_(False)``)."""
        for _, param in self.named_parameters():
            yield param

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def requires_grad_(self, flag: bool = True) -> PeftHandle:
        for param in self.parameters():
            param.requires_grad_(flag)
        return self

    # snapshots --------------------------------------------------------------------------------
    def state(self) -> State:
        """A detached copy of every parameter: a snapshot that later training does not change."""
        return {name: param.detach().clone() for name, param in self.named_parameters()}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a snapshot (from :meth:`state`, :func:`average`...) into the attached modules."""
        self._check_unmerged("load a state")
        params = dict(self.named_parameters())
        if set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise ConfigError(f"PEFT state does not match the {self.kind} handle: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}")
        with torch.no_grad():
            for name, param in params.items():
                if state[name].shape != param.shape:
                    raise ConfigError(f"PEFT state {name} has shape {tuple(state[name].shape)}, "
                                      f"expected {tuple(param.shape)}")
                param.copy_(state[name])

    @contextmanager
    def using(self, state: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Run with another set of values (e.g. a stored task adapter); the current values come back after."""
        saved = self.state()
        self.load_state(state)
        try:
            yield
        finally:
            self.load_state(saved)

    # switching ----------------------------------------------------------------------------------
    def set_enabled(self, flag: bool) -> None:
        """Turn the modules off (the model computes exactly as without them) or on again."""
        self._check_unmerged("enable or disable")
        for module in self.modules.values():
            module.enabled = bool(flag)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        previous = [m.enabled for m in self.modules.values()]
        self.set_enabled(False)
        try:
            yield
        finally:
            for module, flag in zip(self.modules.values(), previous):
                module.enabled = flag

    def set_scale(self, value: float) -> None:
        """Set the fixed output scale of every adapter / LoRA update (ViDA sets scales per batch)."""
        self._check_unmerged("change scales")
        for module in self._scaled():
            if isinstance(module.scale, nn.Parameter):
                raise ConfigError("this handle's scales are learnable (scale=None); they cannot be set")
            module.scale = float(value)

    def _scaled(self) -> Iterator[nn.Module]:
        for module in self.modules.values():
            if isinstance(module, LoRA):
                yield from module.pairs.values()
            elif hasattr(module, "scale"):
                yield module

    # LoRA merge ---------------------------------------------------------------------------------
    def merge(self) -> None:
        """Add every LoRA update into its weight; outputs stay the same, the extra compute goes away."""
        self._check_lora("merge")
        if self.merged:
            return
        for name, fn in self._weights.items():
            merge(self.modules[name], fn(), 1.0)
            self.modules[name].merged = True
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the merged updates again (the LoRA parameters take over, e.g. to train further)."""
        self._check_lora("unmerge")
        if not self.merged:
            return
        for name, fn in self._weights.items():
            merge(self.modules[name], fn(), -1.0)
            self.modules[name].merged = False
        self.merged = False

    def merge_and_restart(self) -> None:
        """Fold every current update into its weight and start a fresh LoRA in place (CoDyRA's task boundary,
        ``increment_task``): outputs do not change, the next task trains a new rank-r update from zero.
        Components whose gate is exactly 0 add nothing to ΔW, so pruned ranks are left out of the merge."""
        self._check_lora("merge and restart")
        self._check_unmerged("merge and restart")
        for name, fn in self._weights.items():
            merge(self.modules[name], fn(), 1.0)
        for module in self.modules.values():
            for pair in module.pairs.values():
                pair.reset_parameters()

    def clone_with(self, model: nn.Module) -> tuple[nn.Module, PeftHandle]:
        """A deep copy of ``model`` (which this handle is attached to) and a handle on the copy.

        For mean teachers and EMA copies (ViDA, CoTTA): the copy's modules are separate tensors,
        and ``ema_(teacher_handle, student_handle, decay)``, ``set_scale`` or ``detach`` act on it alone.
        """
        memo: dict[int, Any] = {}
        copied = copy.deepcopy(model, memo)
        missing = [name for name, module in self.modules.items() if id(module) not in memo]
        if missing:
            raise ConfigError(f"clone_with(): {missing[0]} is not part of the given model")
        return copied, copy.deepcopy(self, memo)

    def detach(self) -> None:
        """Remove the modules and restore the library modules. Merged LoRA updates stay in the weights."""
        if not self.attached:
            return
        for undo in reversed(self._undo):
            undo()
        self.attached = False

    def __repr__(self) -> str:
        return f"PeftHandle(kind={self.kind!r}, sites={len(self.modules)}, parameters={self.num_parameters():,})"

    def _check_lora(self, action: str) -> None:
        if self.kind != "lora":
            raise ConfigError(f"cannot {action} a {self.kind} handle; only LoRA merges into weights")
        if not self.attached:
            raise ConfigError(f"cannot {action} a detached handle")

    def _check_unmerged(self, action: str) -> None:
        if self.merged:
            raise ConfigError(f"cannot {action} while the LoRA is merged; call unmerge() first")


def attach(
    model: nn.Module, kind: str, blocks: Iterable[int] | int | None = None, tower: str = "visual", **cfg: Any
) -> PeftHandle:
    """Attach one set of ``kind`` modules to the chosen ``blocks`` (None = all) of ``model``'s ``tower``.

    ``cfg`` goes to the kind's attach function: :func:`~fluxbench.peft.adapter.attach_adapter`,
    :func:`~fluxbench.peft.lora.attach_lora`, :func:`~fluxbench.peft.prefix.attach_prefix` or
    :func:`~fluxbench.peft.prompt.attach_prompts`.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown PEFT kind {kind!r}; use one of {', '.join(KINDS)}")
    found = find_tower(model, tower)
    indices = select_blocks(len(found.container), blocks)
    fn = attach_prompts if kind == "prompt" else _PER_BLOCK[kind]
    _check_cfg(kind, fn, cfg)
    dim = _width(found)
    if kind == "prompt":
        return PeftHandle(kind, {f"{tower}.{i}": a for i, a in attach_prompts(found, indices, dim, **cfg).items()})
    attachments: dict[str, Attachment] = {}
    try:
        for i in indices:
            attachments[f"{tower}.{i}"] = fn(innermost(found.container[i]), found.layout, dim, **cfg)
    except Exception:
        for att in reversed(list(attachments.values())):
            att.undo()
        raise
    return PeftHandle(kind, attachments)


def average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None) -> State:
    """The (weighted) mean of snapshots with the same keys, e.g. MOS's mean of past task adapters."""
    if not states:
        raise ConfigError("average() needs at least one state")
    weights = [1.0 / len(states)] * len(states) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states):
        raise ConfigError(f"average() got {len(states)} states but {len(weights)} weights")
    out = {}
    for name in states[0]:
        acc = sum(w * s[name].float() for w, s in zip(weights, states))
        out[name] = acc.to(states[0][name].dtype)
    return out


def ema_(target: PeftHandle | State, source: PeftHandle | Mapping[str, torch.Tensor], decay: float) -> None:
    """``target <- decay * target + (1 - decay) * source``, in place, without gradients.

    LAE's offline expert: ``ema_(offline_state, online_handle, 0.9999)``; MOS's merge towards the
    mean of past adapters: ``ema_(handle, average(snapshots), 1 - beta)``.
    """
    if not 0.0 <= decay <= 1.0:
        raise ConfigError(f"EMA decay must be in [0, 1], got {decay}")
    dst = dict(target.named_parameters()) if isinstance(target, PeftHandle) else target
    src = dict(source.named_parameters()) if isinstance(source, PeftHandle) else source
    if set(dst) != set(src):
        raise ConfigError("ema_(): target and source hold different PEFT modules")
    with torch.no_grad():
        for name, tensor in dst.items():
            tensor.mul_(decay).add_(src[name].to(tensor.dtype), alpha=1.0 - decay)


def _width(tower: Tower) -> int:
    attn = innermost(getattr(tower.blocks[0], tower.layout.attn))
    if isinstance(attn, nn.MultiheadAttention) or hasattr(attn, "embed_dim"):  # open_clip, split or not
        return int(attn.embed_dim)
    return int(innermost(attn.qkv).in_features)


def _check_cfg(kind: str, fn: Callable, cfg: Mapping[str, Any]) -> None:
    params = list(inspect.signature(fn).parameters)[3:]
    unknown = sorted(set(cfg) - set(params))
    if unknown:
        raise ConfigError(f"unknown {kind} option(s) {', '.join(unknown)}; accepted: {', '.join(params)}")


__all__ = ["KINDS", "PeftHandle", "State", "attach", "average", "ema_"]
