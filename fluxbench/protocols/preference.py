"""The preference protocol: after each binary task, score the models a method gives for user preferences.

IBCL's evaluation (Lu et al., arXiv 2305.14782; upstream ``ibcl-anon/ibcl`` ``zero_shot_model_locate.py``,
``visualize_results.py``; spec ``specs/ibcl.md`` sections 4-5). Per seed (a child run, ``phase=evaluation``)::

    for i, exp in enumerate(stream):               # binary tasks, e.g. benchmark=digits_pairs
        method.train_experience(exp)
        for w in preferences[i]:                    # the same for every method: generated once per stream
            for model in method.preference_models(w):   # IBCL: sampled from the HDR, no training
                accuracy of model on the test set of each task l <= i

Logged: ``preferences.json`` on the parent (generated from ``protocol.preference_seed``, so every method and
seed of a stream gets the same ones); per seed, ``preference_accuracies.json`` (every model's accuracy and,
after task 1, the two-task sweep ``w = (t, 1 - t)``), the preference-weighted matrix ``A`` as the accuracy
matrix, per-step curves and the headline metrics of :mod:`.preference_metrics` (average and peak per-task
accuracy, standard BWT, the code's adjacent-task difference), plus ``models_trained`` / ``batch_updates``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fluxbench.errors import ConfigError
from fluxbench.methods import Method
from fluxbench.methods.registry import get_method, list_methods
from fluxbench.protocols.execution import SupervisedLoop
from fluxbench.protocols.parent import ProtocolCall, run_protocol, run_seeds, seeds_result
from fluxbench.protocols.preference_metrics import generate_preferences, preference_matrix, preference_metrics
from fluxbench.protocols.preflight import preflight
from fluxbench.protocols.setup import load_split
from fluxbench.protocols.summary import format_table
from fluxbench.streams.experience import Experience
from fluxbench.tracking import RunHandle, Tracker, config_hash
from fluxbench.tracking.layout import FINGERPRINT_TAG, PREFERENCE_ACCURACIES_ARTIFACT, PREFERENCES_ARTIFACT

HEADLINE = ("avg_per_task_acc_mean", "peak_per_task_acc_mean", "bwt_mean", "adjacent_task_difference_mean")
COSTS = ("models_trained", "batch_updates")


def preference_methods() -> list[str]:
    return [n for n in list_methods() if hasattr(get_method(n), "preference_models")]


def check_preference_method(name: str) -> None:
    if not hasattr(get_method(name), "preference_models"):
        raise ConfigError(f"method {name!r} does not build models for preferences; protocol=preference runs: "
                          f"{', '.join(preference_methods())}")


def sweep(method: Any, stream: list[Experience], points: int) -> list[list[float]]:
    """Two tasks, ``w = (t, 1 - t)`` for ``t`` in ``linspace(0, 1, points)``: mean accuracy on tasks 0 and 1."""
    rows = []
    for w0 in np.linspace(0.0, 1.0, points):
        models = method.preference_models([float(w0), 1.0 - float(w0)])
        rows.append([float(np.mean([method.task_accuracy(m, stream[t]) for m in models])) for t in (0, 1)])
    return rows


class PreferenceLoop(SupervisedLoop):
    """Binary-task seeds; ``partial`` holds each time's accuracies ``(P_i, K, i + 1)`` (a list of tensors)."""

    def __init__(self, cfg: Mapping[str, Any], split, prefs: list, sweep_points: int) -> None:
        super().__init__(cfg, split)
        if any(size != 2 for size in self.sizes_of_experiences):
            raise ConfigError(f"protocol=preference needs binary tasks (two classes per experience); this stream has "
                              f"{self.sizes_of_experiences}; use a stream of class pairs, e.g. benchmark=digits_pairs")
        self.prefs, self.sweep_points = prefs, sweep_points
        self.details: dict[int, dict] = {}
        self._seed = -1

    def stream(self, seed: int) -> list[Experience]:
        self._seed = seed
        return super().stream(seed)

    def begin(self, stream: list[Experience]) -> dict[str, Any]:
        return {"accs": [], "sweep": torch.full((self.sweep_points, 2), float("nan"), dtype=torch.float64)}

    def experience(self, method: Method, stream: list[Experience], i: int, partial: dict[str, Any],
                   device: torch.device) -> dict[str, float]:
        method.train_experience(stream[i])
        accs = torch.tensor([[[method.task_accuracy(m, stream[t]) for t in range(i + 1)]
                              for m in method.preference_models(w)] for w in self.prefs[i]], dtype=torch.float64)
        partial["accs"].append(accs)
        if i == 1:
            partial["sweep"] = torch.tensor(sweep(method, stream, self.sweep_points), dtype=torch.float64)
        metrics = preference_metrics([a.numpy() for a in partial["accs"]], self.prefs[: i + 1])
        return {f"step.{k}": v for k, v in metrics.items() if k.endswith("_mean")}

    def result(self, stream: list[Experience], partial: dict[str, Any]
               ) -> tuple[dict[str, float], np.ndarray, list[int]]:
        accs = [a.numpy() for a in partial["accs"]]
        self.details[self._seed] = {"accuracies": [a.tolist() for a in accs], "sweep": partial["sweep"].tolist(),
                                    "sweep_t": np.linspace(0, 1, self.sweep_points).tolist()}
        A = preference_matrix(accs, self.prefs)
        return preference_metrics(accs, self.prefs), A, [len(e.test) for e in stream]


def table(label: str, agg: Mapping[str, Mapping[str, float]]) -> str:
    """Accuracies in percent (mean ± std over seeds), then the training cost as counts."""
    costs = ", ".join(f"{k.replace('_', ' ')}: {agg[k]['mean']:.0f}" for k in COSTS if k in agg)
    return format_table({label: agg}, HEADLINE) + (f"\ncost per seed: {costs}" if costs else "")


def run(cfg: Mapping[str, Any], tracker: Tracker) -> dict[str, Any]:
    preflight(cfg, kind="supervised")
    check_preference_method(cfg["method"]["name"])
    split = load_split(cfg, "evaluation")
    proto = cfg["protocol"]
    num_tasks = SupervisedLoop(cfg, split).num_experiences()
    prefs = generate_preferences(num_tasks, int(proto["prefs_per_task"]), int(proto["preference_seed"]))
    loop = PreferenceLoop(cfg, split, prefs, int(proto["sweep_points"]))
    label = f"{cfg['method']['name']} on {cfg['benchmark']['name']}"
    call = ProtocolCall("preference", label, config_hash(cfg, split.fingerprint()),
                        {FINGERPRINT_TAG.format(role="evaluation"): split.fingerprint()},
                        rank_metric="avg_per_task_acc_mean")

    def body(parent: RunHandle):
        tracker.log_json(parent, {"preference_seed": int(proto["preference_seed"]), "preferences": prefs},
                         PREFERENCES_ARTIFACT)
        records = run_seeds(cfg, loop, tracker, parent, label)
        for rec in records:
            if not rec.skipped and rec.seed in loop.details:
                tracker.log_json(RunHandle(rec.run_id), loop.details[rec.seed], PREFERENCE_ACCURACIES_ARTIFACT)
        return seeds_result(records, lambda agg: table(label, agg))

    return run_protocol(cfg, tracker, call, body)
