"""Test-time batch renormalisation (TBR), the BatchNorm forward CEMA uses on its edge and foundation models.

Provenance: github.com/chenyaofo/CEMA ``codebase/core/tta/tbr.py`` (``tbr_bn_forward_impl``), after
Ioffe's batch renormalisation (NeurIPS 2017). With batch statistics ``mu_b, sigma_b`` and running
statistics ``mu_r, sigma_r`` (sigma = sqrt(var + eps), var unbiased as ``torch.var_mean`` gives it)::

    x_hat = (x - mu_b) / sigma_b * r + d,   r = sg(sigma_b) / sigma_r,   d = (sg(mu_b) - mu_r) / sigma_r

so the value equals normalising with the running statistics while gradients flow through the batch
ones. Running statistics start empty: the first batch seen (in any mode) sets them; in train mode
every batch moves them by ``momentum``. What differs: the layer is a ``BatchNorm2d`` subclass swapped
in by class (same parameters and buffers) rather than a patched ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn


class TBRBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` whose forward is CEMA's TBR; ``running_mean``/``running_var`` may start as None."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(0, 2, 3))
        if self.running_mean is None or self.running_var is None:
            self.running_mean, self.running_var = mean.detach().clone(), var.detach().clone()
        std = torch.sqrt(var + self.eps)
        running_std = torch.sqrt(self.running_var + self.eps)
        r = std.detach() / running_std
        d = (mean.detach() - self.running_mean) / running_std
        shape = (1, -1, 1, 1)
        x_hat = (x - mean.view(shape)) / std.view(shape) * r.view(shape) + d.view(shape)
        if self.training:
            with torch.no_grad():
                self.running_mean += self.momentum * (mean.detach() - self.running_mean)
                self.running_var += self.momentum * (var.detach() - self.running_var)
        return self.weight.view(shape) * x_hat + self.bias.view(shape)


def swap_in_tbr(model: nn.Module) -> int:
    """Turn every ``BatchNorm2d`` of ``model`` into a :class:`TBRBatchNorm2d` in place; how many there were."""
    count = 0
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = TBRBatchNorm2d
            count += 1
    return count


def forget_statistics(model: nn.Module) -> None:
    """Empty the running statistics of every TBR layer (the next batch sets them again)."""
    for module in model.modules():
        if isinstance(module, TBRBatchNorm2d):
            module.running_mean = None
            module.running_var = None


def set_bn_training(model: nn.Module, mode: bool) -> None:
    """Train or eval mode for the BatchNorm layers only (CEMA's ``set_bn_training_mode``)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(mode)
