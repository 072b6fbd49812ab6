"""What test-time methods share: the source model, entropy, norm-layer adaptation, exact resets.

A test-time method (``kind = "tta"``) gets the trained source classifier from
``ctx.build_source_model(name)`` (the benchmark's ``source_models``), never from a file, and
implements ``adapt(x) -> logits`` (the prediction for ``x``, made before ``x`` updates it) and
``reset()`` (back to the state it had when built, bit for bit).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fluxbench.errors import ConfigError
from fluxbench.methods.base import Method, check_choice, check_range

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
NORMS = (*BATCH_NORMS, nn.LayerNorm, nn.GroupNorm)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
OPTIMIZERS = ("sgd", "adam")


class TestTimeMethod(Method):
    """Base class of online test-time methods: source model access and snapshot-based resets."""

    kind = "tta"
    __test__ = False  # not a pytest test class, whatever its name

    def source_model(self, name: str = "default") -> nn.Module:
        """A fresh copy of the benchmark's source model ``name``, on the method's device."""
        if self.ctx.build_source_model is None:
            raise ConfigError(f"method {self.name!r} needs a trained source model; use a benchmark with "
                              "source_models (digits_c, cifar10_c, imagenet_c)")
        model = self.ctx.build_source_model(name).to(self.device)
        model.zero_grad(set_to_none=True)  # whatever built it, adaptation starts from no gradient
        return model

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """The current model's logits for ``x`` without adapting on it: what realistic online evaluation scores on
        the batches that arrive while the method is still busy adapting (``protocol.online_eval=realistic``)."""
        raise ConfigError(f"method {self.name!r} has no inference without adaptation (infer), which "
                          "protocol.online_eval=realistic needs")

    def snapshot(self, *parts: nn.Module | torch.optim.Optimizer) -> None:
        """Remember the state of ``parts`` (modules and optimizers) so that :meth:`reset` can restore it."""
        self._parts = parts
        self._saved = [copy.deepcopy(p.state_dict()) for p in parts]

    def reset(self) -> None:
        for part, state in zip(self._parts, self._saved):
            part.load_state_dict(state)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of ``softmax(logits)`` per sample."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def use_batch_statistics(model: nn.Module) -> None:
    """BatchNorm layers forget their running statistics and normalise with each batch's, in train and eval mode."""
    for module in model.modules():
        if isinstance(module, BATCH_NORMS):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None


def configure_norm_adaptation(model: nn.Module, all_parameters: bool = False) -> list[nn.Parameter]:
    """Tent's ``configure_model`` + ``collect_params``: the parameters test-time entropy minimisation trains.

    Train mode; every weight frozen except the affine scale and shift of BatchNorm, LayerNorm and
    GroupNorm layers (``all_parameters``: everything, the ablation); BatchNorm discards its running
    statistics and always normalises with the current batch's; dropout stays off.
    """
    model.train()
    model.requires_grad_(all_parameters)
    for module in model.modules():
        if isinstance(module, NORMS):
            module.requires_grad_(True)
        if isinstance(module, DROPOUTS):
            module.eval()
    use_batch_statistics(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(model).__name__} has no normalisation layers to adapt")
    return params


def make_optimizer(params: Iterable[Any], name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                   nesterov: bool = False) -> torch.optim.Optimizer:
    """Adam (beta 0.9, 0.999) or SGD with momentum, as the TTA reference code builds them."""
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


def check_common(lr: float, momentum: float, steps: int = 1) -> None:
    check_range("lr", lr, 0, 10)
    check_range("momentum", momentum, 0, 1, high_open=True)
    check_range("steps", steps, 1)
