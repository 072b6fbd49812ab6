"""Prompt tokens: learned tokens inserted into the token sequence of a vision transformer.

Provenance: Visual Prompt Tuning (Jia et al., ECCV 2022, github.com/KMnP/vpt). ``mode="deep"``
gives each chosen block its own prompts, inserted before the block and dropped after it (VPT-deep);
``mode="shallow"`` inserts one set before the first chosen block and drops it after the tower's
last block (VPT-shallow when the first block is 0). Prompts go after the class/register tokens, so
token pooling and the patch-token layout are unchanged. What differs: the upstream code edits the
ViT's forward; here each block is wrapped. Init: normal with ``init_std`` (VPT uses a Xavier-style
uniform range; the scale is a config value here).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from fluxbench.errors import ConfigError
from fluxbench.peft.sites import Attachment, Tower
from fluxbench.peft.wrap import Wrapper, unwrap


class Prompt(nn.Module):
    """``length`` tokens of width ``dim``."""

    def __init__(self, dim: int, length: int = 10, init_std: float = 0.02) -> None:
        super().__init__()
        if length < 1:
            raise ConfigError(f"prompt length must be >= 1, got {length}")
        self.tokens = nn.Parameter(torch.randn(length, dim) * init_std)
        self.enabled = True


class PromptBlock(Wrapper):
    """Runs the wrapped block with ``insert`` prompts placed after ``skip`` leading tokens, then drops ``drop``.

    ``insert`` is None for the block that only drops a shallow prompt set; ``owner`` is the Prompt whose
    ``enabled`` flag decides, kept outside the module tree so a shared set is not registered twice.
    """

    def __init__(self, wrapped: nn.Module, insert: Prompt | None, owner: Prompt, skip: int, drop: int) -> None:
        super().__init__(wrapped)
        self.peft = insert
        self._owner = (owner,)
        self.skip, self.drop = skip, drop

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        owner = self._owner[0]
        if not owner.enabled:
            return self.wrapped(x, *args, **kwargs)
        if args or kwargs.get("attn_mask") is not None:
            raise ConfigError("prompt tokens cannot be used with an attention mask (e.g. a CLIP text tower)")
        if self.peft is not None:
            tokens = self.peft.tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :self.skip], tokens, x[:, self.skip:]], dim=1)
        x = self.wrapped(x, **kwargs)
        if self.drop:
            x = torch.cat([x[:, :self.skip], x[:, self.skip + self.drop:]], dim=1)
        return x


def attach_prompts(
    tower: Tower, indices: list[int], dim: int, length: int = 10, mode: str = "deep", init_std: float = 0.02
) -> dict[str, Attachment]:
    """Prompts on the chosen blocks of ``tower``; returns one attachment per wrapped block, keyed by index."""
    if mode not in ("deep", "shallow"):
        raise ConfigError(f"prompt mode={mode!r}; use 'deep' or 'shallow'")
    if not tower.batch_first:
        raise ConfigError("prompt tokens need a batch-first transformer")
    if mode == "deep":
        attachments = {}
        for i in indices:
            prompt = Prompt(dim, length, init_std)
            attachments[str(i)] = _wrap_block(tower, i, prompt, prompt, length)
        return attachments
    prompt = Prompt(dim, length, init_std)
    first, last = indices[0], len(tower.container) - 1
    attachments = {str(first): _wrap_block(tower, first, prompt, prompt, length if first == last else 0)}
    if first != last:
        attachments[str(last)] = _wrap_block(tower, last, None, prompt, length)
    return attachments


def _wrap_block(tower: Tower, index: int, insert: Prompt | None, owner: Prompt, drop: int) -> Attachment:
    container = tower.container
    wrapper = PromptBlock(container[index], insert, owner, tower.num_prefix_tokens, drop)
    if insert is not None:
        insert.to(next(container[index].parameters()).device)
    container[index] = wrapper.train(container[index].training)
    modules = {"prompt": insert} if insert is not None else {}
    return Attachment(modules, functools.partial(unwrap, container, wrapper))
