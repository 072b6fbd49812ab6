"""Classic CL baselines from avalanche, through one adapter (not rewritten).

Upstream: ContinualAI/avalanche ``avalanche.training.supervised`` (EWC, LwF, Replay).
The adapter builds the avalanche strategy around a fluxbench model, hands it each
experience as an avalanche ``DatasetExperience``, applies fluxbench's batched train
transform in ``before_forward``, and predicts with the strategy's model. Avalanche's
own evaluation and loggers are switched off: the protocol evaluates and tracks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from fluxbench.methods.base import ClassifierModel, check_finite, check_range
from fluxbench.methods.registry import register_method
from fluxbench.methods.training import SupervisedMethod, TrainingHparams, make_optimizer
from fluxbench.streams.experience import Experience


def _fluxbench_hooks():
    """An avalanche plugin that applies the stream's batched train transform and stops on a diverging loss.

    Built on first use: importing avalanche takes seconds, and listing methods should not.
    """
    from avalanche.core import SupervisedPlugin

    class FluxbenchHooks(SupervisedPlugin):
        def __init__(self) -> None:
            super().__init__()
            self.transform = None
            self.where = ""

        def before_forward(self, strategy, **kwargs) -> None:
            if self.transform is not None:
                strategy.mbatch[0] = self.transform(strategy.mbatch[0])

        def before_backward(self, strategy, **kwargs) -> None:
            check_finite(strategy.loss, self.where)

    return FluxbenchHooks()


class AvalancheMethod(SupervisedMethod):
    """Base for avalanche strategies; subclasses name the strategy and its extra arguments."""

    strategy_name = "Naive"  # a class in avalanche.training.supervised
    exact_resume = False  # avalanche's plugin state (EWC importances, LwF's old model, the buffer) is not checkpointed

    def strategy_kwargs(self) -> dict[str, Any]:
        return {}

    def __init__(self, hparams: TrainingHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.model = ClassifierModel(ctx.build_backbone(), ctx.num_classes).to(ctx.device)
        from avalanche.training import supervised
        from avalanche.training.plugins import EvaluationPlugin

        self._hooks = _fluxbench_hooks()
        self.strategy = getattr(supervised, self.strategy_name)(
            model=self.model,
            optimizer=make_optimizer(self.model.parameters(), hparams),
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=hparams.batch_size,
            train_epochs=hparams.epochs,
            eval_mb_size=hparams.batch_size,
            device=ctx.device,
            plugins=[self._hooks],
            evaluator=EvaluationPlugin(loggers=[]),
            **self.strategy_kwargs(),
        )

    def train_experience(self, exp: Experience) -> None:
        from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience, EagerCLStream
        from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

        self.num_seen.fill_(exp.num_seen_classes)
        x, y = exp.tensors("train")
        data = _make_taskaware_tensor_classification_dataset(x, y)
        self._hooks.transform = exp.train_transform
        self._hooks.where = f"experience {exp.index}"
        # a fresh optimizer state per experience, as fluxbench's own loop does
        self.strategy.optimizer = make_optimizer(self.model.parameters(), self.hparams)
        stream = EagerCLStream("train", [DatasetExperience(dataset=data, current_experience=exp.index)])
        self.strategy.train(stream[0], num_workers=0)


@dataclass
class EWCHparams(TrainingHparams):
    ewc_lambda: float

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("ewc_lambda", self.ewc_lambda, 0)


@register_method("ewc")
class AvalancheEWC(AvalancheMethod):
    """Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks" (PNAS 2017)."""

    Hparams = EWCHparams
    strategy_name = "EWC"

    def strategy_kwargs(self) -> dict[str, Any]:
        return {"ewc_lambda": self.hparams.ewc_lambda, "mode": "separate"}


@dataclass
class LwFHparams(TrainingHparams):
    alpha: float
    temperature: float

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("alpha", self.alpha, 0)
        check_range("temperature", self.temperature, 0, low_open=True)


@register_method("lwf")
class AvalancheLwF(AvalancheMethod):
    """Li & Hoiem, "Learning without Forgetting" (TPAMI 2017)."""

    Hparams = LwFHparams
    strategy_name = "LwF"

    def strategy_kwargs(self) -> dict[str, Any]:
        return {"alpha": self.hparams.alpha, "temperature": self.hparams.temperature}


@dataclass
class ReplayHparams(TrainingHparams):
    mem_size: int

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("mem_size", self.mem_size, 1)


@register_method("replay")
class AvalancheReplay(AvalancheMethod):
    """Experience replay with a class-balanced buffer (avalanche's ``Replay``)."""

    Hparams = ReplayHparams
    strategy_name = "Replay"

    def strategy_kwargs(self) -> dict[str, Any]:
        return {"mem_size": self.hparams.mem_size}


__all__ = ["AvalancheMethod"]
