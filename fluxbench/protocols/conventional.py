"""The conventional protocol: train and report on one scenario (the evaluation data).

It runs the configured hyperparameters over ``protocol.num_seeds`` seeds and reports mean,
std and a 95% confidence interval. When hyperparameters are tuned on the same scenario
(as most papers do), this number is optimistic; ``two_phase`` measures by how much.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from fluxbench.methods.registry import validate_hyperparameters
from fluxbench.protocols.execution import run_seed
from fluxbench.protocols.progress import Progress
from fluxbench.protocols.setup import load_split, scenario_of
from fluxbench.protocols.summary import aggregate, flat_summary, format_table
from fluxbench.tracking import Tracker, config_hash, flatten


def seeds_of(cfg: Mapping[str, Any]) -> list[int]:
    return [int(cfg["seed"]) + k for k in range(int(cfg["protocol"]["num_seeds"]))]


def run(cfg: Mapping[str, Any], tracker: Tracker) -> dict[str, Any]:
    validate_hyperparameters(cfg["method"])
    split = load_split(cfg, "evaluation")
    chash = config_hash(cfg, split.fingerprint())
    label = f"{cfg['method']['name']} on {cfg['benchmark']['name']}"
    done = tracker.finished(chash)
    if done is not None:
        print(f"skipped: {label} with this exact config already finished (run {done.info.run_id}); "
              "change a value or the tracking experiment to run it again")
        return {"skipped": True, "run_id": done.info.run_id}

    parent = tracker.start(f"conventional: {label}", chash, "protocol", tags={
        "protocol": "conventional", "method": cfg["method"]["name"], "benchmark": cfg["benchmark"]["name"],
        "data_fingerprint.evaluation": split.fingerprint(),
    })
    tracker.log_params(parent, flatten(cfg))
    tracker.log_text(parent, yaml.safe_dump(cfg, sort_keys=False), "config.yaml")
    seeds = seeds_of(cfg)
    n_exp = len(scenario_of(cfg).experience_sizes(split.num_classes))
    results = []
    try:
        with Progress(total=len(seeds) * n_exp, desc=label, enabled=cfg.get("progress", True)) as bar:
            for seed in seeds:
                results.append(run_seed(cfg, split, seed, tracker, parent, {"phase": "evaluation"}, bar.update))
    except BaseException:
        tracker.end(parent, "FAILED")
        raise
    agg = aggregate(r.metrics for r in results)
    tracker.log_metrics(parent, flat_summary(agg))
    tracker.log_json(parent, {"seeds": seeds, "summary": agg}, "summary.json")
    tracker.end(parent)
    print(format_table({label: agg}))
    return {"skipped": False, "run_id": parent.run_id, "summary": agg, "seeds": results}
