"""Shared core of the baselines that must train one model per preference (IBCL's comparison, specs/ibcl.md s. 5).

Lu et al., "IBCL" (arXiv 2305.14782) compares its zero-shot preference models with rehearsal methods that serve a
preference ``w`` by training on ``sum_l w_l * loss_l`` over the tasks seen (upstream ``ibcl-anon/ibcl``
``baseline_gem.py``, ``baseline_vcl.py``). The contract the preference protocol uses::

    method.train_experience(exp)       # the continual state: one model per task (the equal-weight preference)
    method.preference_models(w)        # ONE training run for w, from the state before the current task
    method.task_accuracy(model, exp)

Harness conventions (what differs from upstream):

- Every preference run starts from the state left by the previous task (upstream keeps training one model across
  all preferences, so a preference's model depended on the order preferences were asked in); the continual
  state itself is the run for the equal-weight preference, so models are the same whatever the protocol asks.
- The loss of a step is the weighted sum over the current batch and every past task's memory (the first
  ``memory_per_task`` training examples), one optimiser step per batch; upstream's GEM file calls ``zero_grad``
  once per run (gradients accumulate) and its VCL file takes one SVI step per task term: neither is reproduced.
- Features come from the frozen backbone, once per experience, as IBCL's; memories are kept as features in the
  checkpoint (the current task's features are recomputed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from fluxbench.methods.base import Method
from fluxbench.methods.bayesian_head import Params, head_logits, head_shapes
from fluxbench.methods.credal_set import check_preference
from fluxbench.methods.ibcl import binary_task_features, task_guessed_scores
from fluxbench.streams.experience import Experience, iterate_batches

# one step's data: (features, 0/1 labels, weight) per term of the weighted loss
WeightedBatch = list[tuple[torch.Tensor, torch.Tensor, float]]


class PreferenceTrained(Method, ABC):
    """Memory, features and cost counters; subclasses give ``fit(pref, batches) -> state`` and ``models(state)``."""

    def __init__(self, hparams: Any, ctx) -> None:
        super().__init__(hparams, ctx)
        self.backbone = ctx.build_backbone().to(ctx.device).eval().requires_grad_(False)
        self.shapes = head_shapes(hparams.model_size, self.backbone.num_features)
        # every task's first training examples as features (the current task's too, so a checkpoint holds them)
        self.memory: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.current: tuple[torch.Tensor, torch.Tensor] | None = None  # the current task's training features
        self.previous: Any = None  # the continual state after the previous task (None before task 1)
        self.state_now: Any = None  # the continual state after the current task
        self.register_buffer("class_means", torch.zeros(ctx.num_classes, self.backbone.num_features, device=ctx.device))
        self.models_trained = 0
        self.batch_updates = 0
        self._features: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # in memory only

    # -- subclass hooks ------------------------------------------------------------------------------
    @abstractmethod
    def fit(self, start: Any, make_batches: Callable[[], Iterator[WeightedBatch]]) -> tuple[Any, int]:
        """Train one run from ``start`` (None: from scratch) over ``make_batches()`` epochs; (state, steps)."""

    @abstractmethod
    def models(self, state: Any, num_models: int | None) -> list[Params]:
        """The head parameters a trained ``state`` predicts with (one for a point estimate, samples for VCL)."""

    @abstractmethod
    def continual_model(self) -> Params:
        """The head the standard protocols score (the continual state after the latest task)."""

    # -- features and data ---------------------------------------------------------------------------
    def task_features(self, exp: Experience, part: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        return binary_task_features(self.backbone, self._features, exp, part, self.device)

    def weighted_batches(self, pref: Sequence[float]) -> Callable[[], Iterator[WeightedBatch]]:
        """One epoch: each batch of the current task with every past task's whole memory, weighted by ``pref``."""
        assert self.current is not None
        feats, labels = self.current
        w = check_preference(pref, len(self.memory))

        def epoch() -> Iterator[WeightedBatch]:
            for x, y in iterate_batches(feats, labels, self.hparams.batch_size):
                terms = [(mx, my, w[t]) for t, (mx, my) in enumerate(self.memory[:-1]) if w[t] > 0]
                yield [*terms, (x, y, w[-1])]

        return epoch

    def train_run(self, pref: Sequence[float]) -> Any:
        state, steps = self.fit(self.previous, self.weighted_batches(pref))
        self.models_trained += 1
        self.batch_updates += steps
        return state

    # -- the protocol's calls ------------------------------------------------------------------------
    def train_experience(self, exp: Experience) -> None:
        self.previous = self.state_now
        self.current = x, y = self.task_features(exp, "train")
        for c in (0, 1):
            self.class_means[exp.new_class_range.start + c] = x[y == c].mean(0)
        n = self.hparams.memory_per_task
        self.memory.append((x[:n].clone(), y[:n].clone()))
        k = len(self.memory)
        self.state_now = self.train_run([1.0 / k] * k)

    def preference_models(self, pref: Sequence[float], num_models: int | None = None,
                          generator: torch.Generator | None = None) -> list[Params]:
        """Trains one run for ``pref`` (this is the cost IBCL avoids), then its model(s)."""
        return self.models(self.train_run(pref), num_models)

    @torch.no_grad()
    def task_accuracy(self, model: Params, exp: Experience) -> float:
        feats, labels = self.task_features(exp, "test")
        return float(((head_logits(model, feats) > 0).long() == labels).float().mean())

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The class-incremental contract, as IBCL's ``predict``: the continual state (the equal-weight preference)
        with the task guessed by the nearest class mean; the paper's numbers come from ``protocol=preference``."""
        feats = self.backbone(x).float()
        k = len(self.memory)
        if k == 0:
            return feats.new_zeros(len(x), self.ctx.num_classes)
        return task_guessed_scores(feats, head_logits(self.continual_model(), feats), self.class_means[: 2 * k],
                                   self.ctx.num_classes)

    def cost(self) -> dict[str, float]:
        return {"models_trained": float(self.models_trained), "batch_updates": float(self.batch_updates)}

    # -- resume ----------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"memory": [[x.cpu(), y.cpu()] for x, y in self.memory], "previous": self.to_state(self.previous),
                "now": self.to_state(self.state_now), "counts": [self.models_trained, self.batch_updates]}

    def set_extra_state(self, state: dict) -> None:
        self.memory = [(x.to(self.device), y.to(self.device)) for x, y in state["memory"]]
        self.previous, self.state_now = self.from_state(state["previous"]), self.from_state(state["now"])
        self.models_trained, self.batch_updates = (int(v) for v in state["counts"])

    @abstractmethod
    def to_state(self, state: Any) -> Any:
        """``state`` as tensors and lists, for a checkpoint loaded with ``weights_only=True``."""

    @abstractmethod
    def from_state(self, state: Any) -> Any:
        """The inverse of :meth:`to_state`, on this method's device."""
