"""The parent run of one protocol call, written once for every protocol.

A protocol states what is its own in a :class:`ProtocolCall` (its name, label, config hash, extra tags,
the metric that ranks it) and a *body* that runs its seeds, trials or phases under the parent run;
:func:`run_protocol` does the rest:

1. hold the call's config hash (a second process with the same command waits, then finds the result);
2. a finished parent with that hash: say it is skipped, return it;
3. start (or resume) the parent with its tags, params (the flattened config) and ``config.yaml``;
4. run the body; any exception (an interrupt included) ends the parent FAILED/KILLED with its reason;
5. log the body's metrics and ``summary.json``, end the parent FINISHED, print the body's table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from fluxbench.protocols.progress import Progress
from fluxbench.protocols.seeds import SeedLoop, run_seed
from fluxbench.protocols.summary import aggregate, flat_summary
from fluxbench.tracking import RunHandle, SeedRecord, Tracker, flatten
from fluxbench.tracking import layout as L


@dataclass
class ProtocolCall:
    protocol: str
    label: str  # "mos on digits": how the console and the run name say it
    key: str  # the config hash of the whole call
    tags: dict[str, Any] = field(default_factory=dict)
    rank_metric: str = "last_accuracy"  # the seed-run metric the report ranks this call by
    rank_order: str = "max"  # "max": higher is better; "min": lower is better


@dataclass
class ParentResult:
    """What a protocol's body gives back: logged on the parent, printed, and returned to the caller."""

    metrics: dict[str, float]
    summary: dict[str, Any]
    table: str
    returned: dict[str, Any] = field(default_factory=dict)


def preset_tags(cfg: Mapping[str, Any]) -> dict[str, str]:
    """The preset a run reproduces and its published figure, kept on the parent so a report needs only the store."""
    figure = cfg.get("reproduce")
    if not figure:
        return {}
    keep = ("metric", "published", "tolerance", "source", "also")
    return {L.PRESET_TAG: figure["name"], L.REPRODUCE_TAG: json.dumps({k: figure.get(k) for k in keep})}


def seeds_of(cfg: Mapping[str, Any], key: str = "num_seeds") -> list[int]:
    """``seed, seed + 1, ...``: ``protocol.<key>`` of them."""
    return [int(cfg["seed"]) + k for k in range(int(cfg["protocol"][key]))]


def run_protocol(cfg: Mapping[str, Any], tracker: Tracker, call: ProtocolCall,
                 body: Callable[[RunHandle], ParentResult]) -> dict[str, Any]:
    """Skip, or start, run ``body`` under, and close the parent run of ``call``."""
    with tracker.exclusive(call.key, f"{call.protocol} for {call.label}"):
        done = tracker.finished(call.key)
        if done is not None:
            if preset_tags(cfg):  # a preset run as plain `fluxbench run` first: it is still that preset's result
                tracker.set_tags(RunHandle(done.info.run_id), preset_tags(cfg))
            print(f"skipped: {call.protocol} for {call.label} with this exact config already finished "
                  f"(run {done.info.run_id}); change a value or the tracking experiment to run it again")
            return {"skipped": True, "run_id": done.info.run_id}
        tags = {L.PROTOCOL_TAG: call.protocol, L.METHOD_TAG: cfg["method"]["name"],
                L.BENCHMARK_TAG: cfg["benchmark"]["name"], L.RANK_TAG: call.rank_metric,
                L.RANK_ORDER_TAG: call.rank_order, **preset_tags(cfg), **call.tags}
        parent = tracker.start(f"{call.protocol}: {call.label}", call.key, L.KIND_PROTOCOL, tags=tags)
        with tracker.failing_on_error(parent):
            if parent.resumed:
                tracker.set_tags(parent, tags)
            tracker.log_params(parent, flatten(cfg))
            if not parent.resumed:
                tracker.log_text(parent, yaml.safe_dump(dict(cfg), sort_keys=False), L.CONFIG_ARTIFACT)
            result = body(parent)
            tracker.log_metrics(parent, result.metrics)
            tracker.log_json(parent, result.summary, L.SUMMARY_ARTIFACT)
            tracker.end(parent)
    print(result.table)
    return {"skipped": False, "run_id": parent.run_id, **result.returned}


def run_seeds(cfg: Mapping[str, Any], loop: SeedLoop, tracker: Tracker, parent: RunHandle, desc: str,
              key: str = "num_seeds", tags: Mapping[str, Any] | None = None) -> list[SeedRecord]:
    """Every seed of ``protocol.<key>`` through ``loop``, in this process, with one progress bar."""
    seeds = seeds_of(cfg, key)
    tags = {L.PHASE_TAG: L.PHASE_EVALUATION, **(tags or {})}
    with Progress(len(seeds) * loop.num_experiences(), desc, enabled=cfg.get("progress", True)) as bar:
        return [run_seed(cfg, s, loop, tracker, parent, tags, bar.update) for s in seeds]


def seeds_result(records: list[SeedRecord], table: Callable[[dict], str]) -> ParentResult:
    """The parent of a protocol that runs seeds and aggregates them (mean, std, 95% CI)."""
    agg = aggregate(r.metrics for r in records)
    return ParentResult(flat_summary(agg), {"seeds": [r.seed for r in records], "summary": agg}, table(agg),
                        {"summary": agg, "seeds": records})
