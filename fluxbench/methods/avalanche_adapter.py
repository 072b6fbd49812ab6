"""Classic CL baselines from avalanche, through one adapter (not rewritten).

Upstream: ContinualAI/avalanche ``avalanche.training.supervised`` (EWC, LwF, Replay).
The adapter builds the avalanche strategy around a fluxbench model, hands it each
experience as an avalanche ``DatasetExperience``, applies fluxbench's batched train
transform in ``before_forward``, and predicts with the strategy's model. Avalanche's
own evaluation and loggers are switched off: the protocol evaluates and tracks.

Avalanche keeps its state in plain Python objects (the strategy's clock, EWC's importances, LwF's previous
model, the replay buffer), outside ``state_dict()``. Each strategy here converts its plugin's state to
tensors and lists in ``get_extra_state`` and back in ``set_extra_state``, so a checkpoint holds it, loads
with ``weights_only=True``, and an interrupted seed resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
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
    plugin_type = ""  # the avalanche plugin that holds the strategy's state, in avalanche.training.plugins

    def strategy_kwargs(self) -> dict[str, Any]:
        return {}

    def plugin_state(self, plugin: Any) -> dict[str, Any]:
        """The plugin's state as tensors, lists and numbers (what ``torch.load(weights_only=True)`` reads)."""
        return {}

    def load_plugin_state(self, plugin: Any, state: dict[str, Any]) -> None:
        pass

    def _plugin(self) -> Any:
        from avalanche.training import plugins

        (plugin,) = [p for p in self.strategy.plugins if isinstance(p, getattr(plugins, self.plugin_type))]
        return plugin

    def get_extra_state(self) -> dict[str, Any]:
        clock = {k: v for k, v in vars(self.strategy.clock).items() if type(v) is int}
        return {"clock": clock, "plugin": self.plugin_state(self._plugin()) if self.plugin_type else {}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        vars(self.strategy.clock).update(state["clock"])
        if self.plugin_type:
            self.load_plugin_state(self._plugin(), state["plugin"])

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
    plugin_type = "EWCPlugin"

    def strategy_kwargs(self) -> dict[str, Any]:
        return {"ewc_lambda": self.hparams.ewc_lambda, "mode": "separate"}

    def plugin_state(self, plugin: Any) -> dict[str, Any]:
        # {experience: {parameter name: tensor}}, for the parameters saved after it and their importances
        return {part: {int(t): {k: d.data for k, d in params.items()} for t, params in getattr(plugin, part).items()}
                for part in ("saved_params", "importances")}

    def load_plugin_state(self, plugin: Any, state: dict[str, Any]) -> None:
        from avalanche.training.utils import ParamData

        for part in ("saved_params", "importances"):
            table = getattr(plugin, part)
            table.clear()
            for t, params in state[part].items():
                table[int(t)] = {k: ParamData(k, init_tensor=v.to(self.device), device=self.device)
                                 for k, v in params.items()}


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
    plugin_type = "LwFPlugin"

    def strategy_kwargs(self) -> dict[str, Any]:
        return {"alpha": self.hparams.alpha, "temperature": self.hparams.temperature}

    def plugin_state(self, plugin: Any) -> dict[str, Any]:
        lwf = plugin.lwf
        return {"expcount": lwf.expcount,
                "prev_model": None if lwf.prev_model is None else lwf.prev_model.state_dict(),
                # in the sets' own iteration order, which decides the order of the distilled logits
                "prev_classes_by_task": {int(t): [int(c) for c in cs] for t, cs in lwf.prev_classes_by_task.items()}}

    def load_plugin_state(self, plugin: Any, state: dict[str, Any]) -> None:
        import copy
        from collections import defaultdict

        lwf = plugin.lwf
        lwf.expcount = state["expcount"]
        lwf.prev_model = None
        if state["prev_model"] is not None:
            lwf.prev_model = copy.deepcopy(self.model)  # the architecture; the weights come next
            lwf.prev_model.load_state_dict(state["prev_model"])
        lwf.prev_classes_by_task = defaultdict(set, {t: set(cs) for t, cs in state["prev_classes_by_task"].items()})


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
    plugin_type = "ReplayPlugin"

    def strategy_kwargs(self) -> dict[str, Any]:
        return {"mem_size": self.hparams.mem_size}

    def plugin_state(self, plugin: Any) -> dict[str, Any]:
        # one reservoir per experience: its samples in buffer order, and the reservoir weights that rank them
        policy = plugin.storage_policy
        groups = {}
        for key, group in policy.buffer_groups.items():
            items = [group.buffer[i] for i in range(len(group.buffer))]
            groups[int(key)] = {"x": torch.stack([item[0] for item in items]),
                                "y": torch.tensor([int(item[1]) for item in items], dtype=torch.long),
                                "weights": group._buffer_weights, "max_size": group.max_size}
        return {"num_exps": policy._num_exps, "groups": groups}

    def load_plugin_state(self, plugin: Any, state: dict[str, Any]) -> None:
        from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
        from avalanche.training.storage_policy import ReservoirSamplingBuffer

        policy = plugin.storage_policy
        policy._num_exps = state["num_exps"]
        policy.buffer_groups.clear()
        for key, group in state["groups"].items():
            buffer = ReservoirSamplingBuffer(group["max_size"])
            buffer.buffer = _make_taskaware_tensor_classification_dataset(group["x"], group["y"])
            buffer._buffer_weights = group["weights"]
            policy.buffer_groups[int(key)] = buffer


__all__ = ["AvalancheMethod"]
