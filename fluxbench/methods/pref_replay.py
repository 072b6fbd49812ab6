"""Preference-weighted replay: IBCL's rehearsal baseline, one deterministic head trained per preference.

Upstream ``ibcl-anon/ibcl`` ``baseline_gem.py`` (called "GEM" there, but plain episodic replay with no gradient
projection): Adam on ``sum_l w_l * BCE_l`` over the current task and the first 200 training examples of each past
task. Spec ``specs/ibcl.md`` section 5; the harness's conventions are in :mod:`.preference_training`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fluxbench.errors import DivergedError
from fluxbench.methods.base import check_choice, check_range
from fluxbench.methods.bayesian_head import HEAD_SIZES, Params, head_logits
from fluxbench.methods.preference_training import PreferenceTrained, WeightedBatch
from fluxbench.methods.registry import register_method


@dataclass
class PrefReplayHparams:
    model_size: str
    lr: float
    epochs: int
    batch_size: int
    memory_per_task: int

    def __post_init__(self) -> None:
        check_choice("model_size", self.model_size, HEAD_SIZES)
        check_range("lr", self.lr, 0, 10, low_open=True)
        check_range("epochs", self.epochs, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("memory_per_task", self.memory_per_task, 1)


def init_head(shapes: dict[str, tuple[int, ...]], device: torch.device) -> Params:
    """torch's ``nn.Linear`` default range, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from the global RNG."""
    out = {}
    for name, shape in shapes.items():
        fan_in = shapes[name.replace(".bias", ".weight")][1]
        bound = 1 / math.sqrt(fan_in)
        out[name] = torch.empty(shape, device=device).uniform_(-bound, bound)
    return out


@register_method("pref_replay")
class PrefReplay(PreferenceTrained):
    """One deterministic head per preference, warm-started from the head of the previous task."""

    Hparams = PrefReplayHparams

    def fit(self, start: Params | None, make_batches: Callable[[], Iterator[WeightedBatch]]) -> tuple[Params, int]:
        init = init_head(self.shapes, self.device) if start is None else start
        params = {n: v.detach().clone().requires_grad_(True) for n, v in init.items()}
        opt = torch.optim.Adam(params.values(), lr=self.hparams.lr)
        steps = 0
        for _ in range(self.hparams.epochs):
            for terms in make_batches():
                loss = sum(w * F.binary_cross_entropy_with_logits(head_logits(params, x), y.float())
                           for x, y, w in terms)
                if not torch.isfinite(loss):
                    raise DivergedError(f"the replay loss became {float(loss)}; lower method.lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
        return {n: v.detach() for n, v in params.items()}, steps

    def models(self, state: Params, num_models: int | None) -> list[Params]:
        return [state]  # deterministic: one model per preference

    def continual_model(self) -> Params:
        return self.state_now

    def to_state(self, state: Params | None) -> dict | None:
        return None if state is None else {n: v.cpu() for n, v in state.items()}

    def from_state(self, state: dict | None) -> Params | None:
        return None if state is None else {n: v.to(self.device) for n, v in state.items()}
