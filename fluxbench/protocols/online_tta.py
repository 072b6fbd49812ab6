"""The online test-time adaptation protocol: unlabeled batches arrive, the method predicts and adapts.

As in mariodoebler/test-time-adaptation (``classification/test_time.py``), for each seed::

    for exp in stream:                          # continual | gradual | mixed | reset_each_shift
        if exp.metadata["reset_before"]: method.reset()
        for x in batches of exp.test:           # in stream order, labels withheld
            logits = method.adapt(x)            # the prediction for x, made before x updates the method
            score logits against the labels

Error = 1 - accuracy of those predictions. Per seed (a child run, ``phase=evaluation``):
``error.<corruption>-<severity>`` per domain (a domain met twice, as in gradual, pools both
visits; mixed breaks its one experience down by each sample's domain), ``error`` stepped per
experience, ``mean_error`` (mean over experiences; mixed: over all samples), ``mean_error_at_5``
(gradual: severity-5 blocks only), wall time, peak memory and the method's ``cost()``. The
parent run aggregates seeds (mean, std, 95% CI) and the printed table shows mean and
per-domain errors. A finished identical configuration is skipped, per seed and as a whole.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import yaml

from fluxbench.errors import ConfigError
from fluxbench.methods import Method, create_method, get_method, list_methods
from fluxbench.methods.registry import validate_hyperparameters
from fluxbench.protocols.conventional import seeds_of
from fluxbench.protocols.execution import peak_memory_mb
from fluxbench.protocols.progress import Progress
from fluxbench.protocols.setup import method_context, resolve_device, seed_everything
from fluxbench.protocols.summary import aggregate, flat_summary, format_table
from fluxbench.protocols.tta_data import domains_fingerprint, load_domains, seed_stream, tta_options, unlabeled_batches
from fluxbench.streams.experience import Experience
from fluxbench.streams.manifest import stream_manifest
from fluxbench.tracking import RunHandle, Tracker, config_hash, flatten


def adapt_stream(
    method: Method,
    stream: list[Experience],
    batch_size: int,
    device: Any,
    after_experience: Callable[[int, np.ndarray], None] | None = None,
) -> list[np.ndarray]:
    """The online loop; returns, per experience, whether each test sample was predicted right."""
    hits = []
    for i, exp in enumerate(stream):
        if exp.metadata.get("reset_before"):
            method.reset()
        correct = np.zeros(len(exp.test), dtype=bool)
        for x, labels, rows in unlabeled_batches(exp.test, batch_size, device):
            logits = method.adapt(x)
            correct[rows] = logits.argmax(1).cpu().numpy() == labels
        hits.append(correct)
        if after_experience:
            after_experience(i, correct)
    return hits


def domain_of(exp: Experience) -> str:
    return f"{exp.metadata['corruption']}-{exp.metadata['severity']}"


def tta_metrics(stream: list[Experience], hits: list[np.ndarray]) -> dict[str, float]:
    """Error per domain, mean error (and, for gradual, the mean error at severity 5)."""
    per_domain: dict[str, list[np.ndarray]] = {}
    block_errors, at_5 = [], []
    for exp, correct in zip(stream, hits):
        if "sample_domain" in exp.metadata:
            which = np.asarray(exp.metadata["sample_domain"])
            for k, d in enumerate(exp.metadata["domains"]):
                per_domain.setdefault(f"{d['corruption']}-{d['severity']}", []).append(correct[which == k])
        else:
            per_domain.setdefault(domain_of(exp), []).append(correct)
            block_errors.append(1.0 - float(correct.mean()))
            if exp.metadata.get("severity") == 5:
                at_5.append(block_errors[-1])
    metrics = {f"error.{k}": 1.0 - float(np.concatenate(v).mean()) for k, v in per_domain.items()}
    if block_errors:
        metrics["mean_error"] = float(np.mean(block_errors))
    else:
        metrics["mean_error"] = 1.0 - float(np.concatenate(hits).mean())
    if stream and stream[0].metadata.get("setting") == "gradual" and at_5:
        metrics["mean_error_at_5"] = float(np.mean(at_5))
    return metrics


def recording_context(cfg: Mapping[str, Any], num_classes: int, built: dict[str, str]):
    """The method context, with a source-model builder that notes each model's recipe hash in ``built``."""
    ctx = method_context(cfg, num_classes=num_classes)
    inner = ctx.build_source_model
    if inner is None:
        return ctx

    def build_source_model(name: str = "default"):
        model = inner(name)
        recipe = getattr(model, "recipe", {})
        built[f"source_model.{name}"] = f"{recipe.get('kind', '?')}:{recipe.get('recipe_hash', '?')}"
        return model

    return dataclasses.replace(ctx, build_source_model=build_source_model)


def run_seed(cfg: Mapping[str, Any], domains, num_classes: int, fingerprint: str, seed: int, tracker: Tracker,
             parent: RunHandle, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One seed as a child run: stream, method, online loop, metrics. A finished identical seed is reused."""
    chash = config_hash(cfg, "seed", seed, fingerprint)
    done = tracker.finished(chash)
    if done is not None:
        stream_len = len(seed_stream(cfg, domains, num_classes, seed))
        if progress:
            progress(stream_len)
        return {"seed": seed, "metrics": dict(done.data.metrics), "run_id": done.info.run_id, "skipped": True,
                "tags": {k: v for k, v in done.data.tags.items() if k.startswith("source_model.")}}

    seed_everything(seed)
    stream = seed_stream(cfg, domains, num_classes, seed)
    run = tracker.start(f"seed {seed}", chash, "seed", parent.run_id, {"seed": seed, "phase": "evaluation"},
                        resume=False)
    tracker.log_params(run, flatten(cfg) | {"seed": seed})
    tracker.log_json(run, stream_manifest(stream, seed=seed, fingerprint=fingerprint), "stream_manifest.json")
    built: dict[str, str] = {}
    ctx = recording_context(cfg, num_classes, built)

    def after_experience(i: int, correct: np.ndarray) -> None:
        tracker.log_metrics(run, {"error": 1.0 - float(correct.mean())}, step=i)
        if progress:
            progress(1)

    started = time.perf_counter()
    with tracker.failing_on_error(run):
        method = create_method(cfg["method"], ctx)
        tracker.set_tags(run, built)
        hits = adapt_stream(method, stream, int(cfg["protocol"]["batch_size"]), ctx.device, after_experience)
    metrics = tta_metrics(stream, hits)
    metrics.update(wall_time_s=time.perf_counter() - started, peak_memory_mb=peak_memory_mb(ctx.device),
                   **method.cost())
    tracker.log_metrics(run, metrics)
    tracker.end(run)
    return {"seed": seed, "metrics": metrics, "run_id": run.run_id, "skipped": False, "tags": built}


def check_method(cfg: Mapping[str, Any]) -> None:
    validate_hyperparameters(cfg["method"])
    name = cfg["method"]["name"]
    if get_method(name).kind != "tta":
        tta = [m for m in list_methods() if get_method(m).kind == "tta"]
        raise ConfigError(f"method {name!r} is not a test-time method; protocol=online_tta runs: {', '.join(tta)}")
    if int(cfg["protocol"]["batch_size"]) < 1:
        raise ConfigError(f"protocol.batch_size must be >= 1, got {cfg['protocol']['batch_size']}")


def run(cfg: Mapping[str, Any], tracker: Tracker) -> dict[str, Any]:
    check_method(cfg)
    opts = tta_options(cfg)
    domains, num_classes = load_domains(cfg, "evaluation", resolve_device(str(cfg.get("device", "auto"))))
    fingerprint = domains_fingerprint(domains)
    chash = config_hash(cfg, fingerprint)
    label = f"{cfg['method']['name']} on {cfg['benchmark']['name']} ({opts['setting']})"
    done = tracker.finished(chash)
    if done is not None:
        print(f"skipped: {label} with this exact config already finished (run {done.info.run_id}); "
              "change a value or the tracking experiment to run it again")
        return {"skipped": True, "run_id": done.info.run_id}

    parent = tracker.start(f"online_tta: {label}", chash, "protocol", tags={
        "protocol": "online_tta", "method": cfg["method"]["name"], "benchmark": cfg["benchmark"]["name"],
        "setting": opts["setting"], "data_fingerprint.evaluation": fingerprint,
    })
    tracker.log_params(parent, flatten(cfg))
    tracker.log_text(parent, yaml.safe_dump(cfg, sort_keys=False), "config.yaml")
    seeds = seeds_of(cfg)
    n_exp = len(seed_stream(cfg, domains, num_classes, seeds[0]))
    results = []
    try:
        with Progress(total=len(seeds) * n_exp, desc=label, enabled=cfg.get("progress", True)) as bar:
            for seed in seeds:
                results.append(run_seed(cfg, domains, num_classes, fingerprint, seed, tracker, parent, bar.update))
    except BaseException:
        tracker.end(parent, "FAILED")
        raise
    agg = aggregate(r["metrics"] for r in results)
    tracker.set_tags(parent, results[0]["tags"])
    tracker.log_metrics(parent, flat_summary(agg))
    tracker.log_json(parent, {"seeds": seeds, "summary": agg}, "summary.json")
    tracker.end(parent)
    print(summary_table(label, agg))
    return {"skipped": False, "run_id": parent.run_id, "summary": agg, "seeds": results}


def summary_table(label: str, agg: Mapping[str, Mapping[str, float]]) -> str:
    """Mean error, then the error of every domain, in percent (mean ± std over seeds)."""
    headline = [m for m in ("mean_error", "mean_error_at_5") if m in agg]
    extra = [m for m in ("uploads", "upload_fraction") if m in agg]
    rows = {label: agg}
    domains = {name.removeprefix("error."): {"error": stats}
               for name, stats in agg.items() if name.startswith("error.")}
    text = format_table(rows, headline) + "\n\n" + format_table(domains, ["error"])
    if extra:
        text += "\n" + ", ".join(f"{m}: {agg[m]['mean']:.4g}" for m in extra)
    return text
