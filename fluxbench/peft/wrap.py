"""Wrapping library modules in place, and unwrapping them again, without copying their code.

A :class:`Wrapper` holds the original module as ``wrapped`` and forwards every attribute it
does not have itself to it, so library code that reads ``block.mlp.fc1`` or ``attn.num_heads``
keeps working while the wrapper is in place. Wrappers stack: a second PEFT module wraps the
first, and any one of them can be removed with :func:`replace_ref` whatever its position.
"""

from __future__ import annotations

from torch import nn


class Wrapper(nn.Module):
    """A module standing in for ``wrapped``; attribute reads fall through to it."""

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "wrapped":
                raise
            return getattr(self.wrapped, name)


def innermost(module: nn.Module) -> nn.Module:
    """The library module under any stack of wrappers."""
    while isinstance(module, Wrapper):
        module = module.wrapped
    return module


def owner_of(root: nn.Module, path: str, through_wrappers: bool = False) -> tuple[nn.Module, str]:
    """The module that holds the attribute ``path`` (dotted) and the attribute's name.

    Intermediate modules are looked up through wrappers, so ``mlp.fc1`` still names the
    MLP's own ``fc1`` when ``mlp`` is wrapped. With ``through_wrappers`` the final module
    is also unwrapped: the owner is then the innermost wrapper that holds the library module.
    """
    parts = path.split(".")
    owner = root
    for part in parts[:-1]:
        owner = innermost(getattr(owner, part))
    name = parts[-1]
    if through_wrappers:
        while isinstance(getattr(owner, name), Wrapper):
            owner, name = getattr(owner, name), "wrapped"
    return owner, name


def unwrap(root: nn.Module, wrapper: Wrapper) -> None:
    """Take ``wrapper`` out of the module tree under ``root``, wherever it sits in a stack."""
    replace_ref(root, wrapper, wrapper.wrapped)


def run_all(fns: list) -> None:
    """Call ``fns`` last to first (undo steps). Undo steps are ``functools.partial`` objects, not closures,
    so ``copy.deepcopy`` of a handle together with its model re-targets them at the copy."""
    for fn in reversed(fns):
        fn()


def replace_ref(root: nn.Module, old: nn.Module, new: nn.Module) -> bool:
    """Put ``new`` wherever a module under ``root`` holds ``old`` as a child; True if one did."""
    found = False
    for module in list(root.modules()):
        for name, child in list(module._modules.items()):
            if child is old:
                setattr(module, name, new)
                found = True
    return found
