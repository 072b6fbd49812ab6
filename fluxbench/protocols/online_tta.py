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
parent run aggregates seeds (mean, std, 95% CI) and is ranked by ``mean_error`` (lower is better).
An interrupted seed restarts from its first batch: a test-time method's optimiser and running
statistics change with every batch, so only a whole seed is a unit of work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from fluxbench.methods import Method, MethodContext
from fluxbench.protocols.parent import ProtocolCall, run_protocol, run_seeds, seeds_of, seeds_result
from fluxbench.protocols.preflight import preflight
from fluxbench.protocols.realistic_online import RealisticClock, realistic_options, relative_speed
from fluxbench.protocols.setup import method_context, resolve_device
from fluxbench.protocols.summary import format_table
from fluxbench.protocols.tta_data import domains_fingerprint, load_domains, seed_stream, tta_options, unlabeled_batches
from fluxbench.streams.experience import Experience
from fluxbench.tracking import Tracker, config_hash
from fluxbench.tracking.layout import FINGERPRINT_TAG, SETTING_TAG


def adapt_experience(method: Method, exp: Experience, batch_size: int, device: Any,
                     clock: RealisticClock | None = None) -> np.ndarray:
    """One experience of the online loop: whether each test sample was predicted right. With a ``clock``
    (realistic online evaluation), the batches the method is too slow for are predicted by ``method.infer``."""
    if exp.metadata.get("reset_before"):
        method.reset()
    correct = np.zeros(len(exp.test), dtype=bool)
    for x, labels, rows in unlabeled_batches(exp.test, batch_size, device):
        logits = method.adapt(x) if clock is None or clock.adapts() else method.infer(x)
        correct[rows] = logits.argmax(1).cpu().numpy() == labels
    return correct


def adapt_stream(
    method: Method,
    stream: list[Experience],
    batch_size: int,
    device: Any,
    after_experience: Callable[[int, np.ndarray], None] | None = None,
) -> list[np.ndarray]:
    """The online loop over a whole stream; returns, per experience, whether each test sample was predicted right."""
    hits = []
    for i, exp in enumerate(stream):
        hits.append(adapt_experience(method, exp, batch_size, device))
        if after_experience:
            after_experience(i, hits[-1])
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


class TestTimeLoop:
    """Online TTA seeds over prebuilt corrupted domains; the result is the error per domain.

    With ``protocol.online_eval=realistic`` a seed makes two passes over its stream: the offline one (every batch
    adapted; its errors logged as ``offline_*``), then, after ``method.reset()``, the realistic one
    (:mod:`fluxbench.protocols.realistic_online`), whose errors are the run's ``mean_error`` and ``error.*``.
    """

    resumable = False

    def __init__(self, cfg: Mapping[str, Any], domains: Mapping, num_classes: int) -> None:
        self.cfg, self.domains, self.num_classes = cfg, domains, num_classes
        self.fingerprint = domains_fingerprint(domains)
        self.batch_size = int(cfg["protocol"]["batch_size"])
        self.realistic = realistic_options(cfg)
        self.built: dict[str, str] = {}  # the source models a method built, by name -> "kind:recipe hash"
        self._length = len(self.stream(seeds_of(cfg)[0]))
        self.clock: RealisticClock | None = None
        self.speed: dict[str, float] = {}

    @property
    def passes(self) -> int:
        return 2 if self.realistic["mode"] == "realistic" else 1

    def num_experiences(self) -> int:
        return self._length * self.passes

    def stream(self, seed: int) -> list[Experience]:
        return seed_stream(self.cfg, self.domains, self.num_classes, seed)

    def context(self, stream: list[Experience]) -> MethodContext:
        self.built.clear()
        ctx = method_context(self.cfg, num_classes=self.num_classes)
        inner = ctx.build_source_model
        if inner is None:
            return ctx

        def build_source_model(name: str = "default"):
            model = inner(name)
            recipe = getattr(model, "recipe", {})
            self.built[f"source_model.{name}"] = f"{recipe.get('kind', '?')}:{recipe.get('recipe_hash', '?')}"
            return model

        return dataclasses.replace(ctx, build_source_model=build_source_model)

    def tags(self) -> dict[str, str]:
        return dict(self.built)

    def begin(self, stream: list[Experience]) -> dict[str, Any]:
        self.clock, self.speed = None, {}
        return {"hits": []}

    def experience(self, method: Method, stream: list[Experience], i: int, partial: dict[str, Any],
                   device: torch.device) -> dict[str, float]:
        T = len(stream)
        if i == T:  # the realistic pass starts from the method as it was built
            method.reset()
            self.clock = RealisticClock(self._relative_speed(method, stream, device))
        correct = adapt_experience(method, stream[i % T], self.batch_size, device, self.clock)
        partial["hits"].append(correct)
        return {"error": 1.0 - float(correct.mean())}

    def _relative_speed(self, method: Method, stream: list[Experience], device: torch.device) -> int:
        given = self.realistic["relative_speed"]
        if given is not None:
            self.speed = {"relative_speed": float(given)}
            return given
        x, _, _ = next(unlabeled_batches(stream[0].test, self.batch_size, device))
        # the stream's pace is the method's own source model's (ViDA's is the ViT one on digits-C)
        source = method.ctx.build_source_model(getattr(method.hparams, "source_model", "default")).to(device)
        k, cost, base = relative_speed(method, source, x, self.realistic["measure"])
        unit = "flops" if self.realistic["measure"] == "flops" else "seconds"
        self.speed = {"relative_speed": float(k), f"adapt_{unit}_per_batch": cost, f"source_{unit}_per_batch": base}
        return k

    def result(self, stream: list[Experience], partial: dict[str, Any]) -> tuple[dict[str, float], None, None]:
        hits, T = partial["hits"], len(stream)
        if self.passes == 1:
            return tta_metrics(stream, hits), None, None
        metrics = tta_metrics(stream, hits[T:])
        metrics |= {f"offline_{k}": v for k, v in tta_metrics(stream, hits[:T]).items()}
        metrics |= self.speed | {"adapted_fraction": self.clock.adapted / max(1, self.clock.batches)}
        return metrics, None, None


def summary_table(label: str, agg: Mapping[str, Mapping[str, float]]) -> str:
    """Mean error, then the error of every domain, in percent (mean ± std over seeds)."""
    headline = [m for m in ("mean_error", "offline_mean_error", "mean_error_at_5") if m in agg]
    extra = [m for m in ("uploads", "upload_fraction", "relative_speed", "adapted_fraction") if m in agg]
    domains = {name.removeprefix("error."): {"error": stats}
               for name, stats in agg.items() if name.startswith("error.")}
    text = format_table({label: agg}, headline) + "\n\n" + format_table(domains, ["error"])
    if extra:
        text += "\n" + ", ".join(f"{m}: {agg[m]['mean']:.4g}" for m in extra)
    return text


def run(cfg: Mapping[str, Any], tracker: Tracker) -> dict[str, Any]:
    preflight(cfg, kind="tta")  # protocol.batch_size included
    opts = tta_options(cfg)
    domains, num_classes = load_domains(cfg, "evaluation", resolve_device(str(cfg.get("device", "auto"))))
    loop = TestTimeLoop(cfg, domains, num_classes)
    label = f"{cfg['method']['name']} on {cfg['benchmark']['name']} ({opts['setting']})"
    call = ProtocolCall("online_tta", label, config_hash(cfg, loop.fingerprint),
                        {SETTING_TAG: opts["setting"], FINGERPRINT_TAG.format(role="evaluation"): loop.fingerprint},
                        rank_metric="mean_error", rank_order="min")

    def body(parent):
        records = run_seeds(cfg, loop, tracker, parent, label)
        tracker.set_tags(parent, {k: v for k, v in records[0].tags.items() if k.startswith("source_model.")})
        return seeds_result(records, lambda agg: summary_table(label, agg))

    return run_protocol(cfg, tracker, call, body)
