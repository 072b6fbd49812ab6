"""The method contract.

A method is one class registered with ``@register_method("name")`` whose defaults and
search space live in ``conf/method/<name>.yaml`` (or in the file its ``config_file``
names, for methods from other packages). The protocol builds it as::

    method = cls(cls.Hparams(**hyperparameters), ctx)

and then calls, for a supervised stream, for each experience in order::

    method.train_experience(exp)          # labels of exp are stream labels
    method.predict(x)                     # any number of times: scores over all ctx.num_classes columns

or, for test-time adaptation, for each unlabeled batch::

    method.adapt(x)                       # logits of its last forward pass on x (steps=1: before the update)
    method.reset()                        # when the stream says a new episode starts

Methods never open files, log, or pick seeds: the protocol seeds torch's global RNG and
tracks everything. A method is an ``nn.Module``, so ``state_dict()`` covers its modules and
buffers; plain-Python state goes through ``get_extra_state``/``set_extra_state``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fluxbench.backbones.base import FeatureBackbone
from fluxbench.errors import ConfigError, DivergedError
from fluxbench.streams.experience import Experience

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class MethodContext:
    """What a method may know about its surroundings, and nothing more."""

    build_backbone: Any  # () -> FeatureBackbone: a fresh copy each call
    num_classes: int  # classes in the whole stream
    device: torch.device
    amp: bool = False  # bf16 autocast on CUDA
    compile: str = "none"  # torch.compile backend for the shared training step ("none": eager)
    # test-time methods: (name="default") -> a fresh trained source classifier (images in [0, 1] -> logits,
    # on the CPU) from the benchmark's source_models; None when the benchmark defines none
    build_source_model: Any = None
    # (name, model, params, recipe) -> record: trains ``params`` (named as in model.state_dict()) of source model
    # ``name`` on that model's source training data, or loads a released checkpoint, cached (ViDA's adapters)
    warm_up_source: Any = None


class Method(nn.Module):
    """Base class; see the module docstring for the call order."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "supervised"  # "supervised" (train_experience/predict) or "tta" (adapt/reset)
    Hparams: ClassVar[type] = dataclass(type("NoHparams", (), {}))
    config_file: ClassVar[Path | None] = None  # default: conf/method/<name>.yaml
    # False: state_dict() does not hold the whole state, so an interrupted seed restarts from its first
    # experience instead of resuming (never a silent divergence)
    exact_resume: ClassVar[bool] = True

    def __init__(self, hparams: Any, ctx: MethodContext) -> None:
        super().__init__()
        self.hparams = hparams
        self.ctx = ctx

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    def train_experience(self, exp: Experience) -> None:
        raise ConfigError(f"method {self.name!r} does not train on supervised experiences (it is test-time only)")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"method {self.name!r} cannot predict without adapting (it is test-time only)")

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"method {self.name!r} does not do test-time adaptation")

    def reset(self) -> None:
        """Return to the state before any adaptation (test-time methods override this)."""

    def cost(self) -> dict[str, float]:
        """Extra accounting the protocol logs (uploads, FLOPs...)."""
        return {}

    @classmethod
    def config_path(cls) -> Path:
        return cls.config_file or CONF_DIR / "method" / f"{cls.name}.yaml"


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise a one-line ConfigError when ``method.<name>`` is outside its range."""
    bad = (
        not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)
        or (low is not None and (value <= low if low_open else value < low))
        or (high is not None and (value >= high if high_open else value > high))
    )
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        raise ConfigError(f"method.{name} must be in {lo or '(-inf'}, {hi or 'inf)'}; got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"method.{name} must be one of {choices}; got {value!r}")


def over_all_classes(scores: torch.Tensor, num_classes: int, fill: float = float("-inf")) -> torch.Tensor:
    """Scores of the seen classes, widened to every class of the stream (``fill`` below any real score): the
    ``predict`` contract, for methods whose scores only exist for the classes seen so far."""
    if scores.shape[1] == num_classes:
        return scores
    return torch.cat([scores, scores.new_full((len(scores), num_classes - scores.shape[1]), fill)], dim=1)


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss.detach()).all():
        raise DivergedError(f"the training loss became {loss.item()} ({where}); lower method.lr or check the data")


class ClassifierModel(nn.Module):
    """A backbone and a linear head over every class of the stream."""

    def __init__(self, backbone: FeatureBackbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
