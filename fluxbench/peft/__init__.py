"""Parameter-efficient modules (adapter, LoRA, prefix, prompt) attached to timm and open_clip transformers.

    handle = attach(backbone, "adapter", blocks=range(12), bottleneck=16, scale=0.1)
    optimizer = torch.optim.SGD(handle.parameters(), lr=0.01)
    snapshot = handle.state()
    with handle.using(snapshot): ...
    handle.detach()

See :mod:`fluxbench.peft.handle` for the whole API.
"""

from fluxbench.peft.handle import KINDS, PeftHandle, State, attach, average, ema_

__all__ = ["KINDS", "PeftHandle", "State", "attach", "average", "ema_"]
