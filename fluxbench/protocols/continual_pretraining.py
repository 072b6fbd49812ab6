"""Continual pretraining under a compute budget: FoMo-in-Flux (spec ``fomo_in_flux.md`` sections 4-7).

Per seed (a child run): experience 0 is the zero-shot point (every test image scored, nothing trained);
experience ``t`` (1..T) trains task ``t``'s budgeted steps on mixed batches (pretraining, update, buffer of
earlier tasks), then scores every dataset (the stratified subset; the last task: every image). Stepped curves
``step.A_KA``, ``step.A_ZS``, ``step.gmean``, ``step.acc.<dataset>``, ``step.batch.<pool>``, ``step.loss``;
results ``A_KA``, ``A_ZS``, ``gmean`` (after the last task), their zero-shot values and means over tasks, the
budget derivation (``budget.*``), and the dataset-by-task table as an artifact. The parent aggregates seeds
and is ranked by ``gmean`` (higher is better). The budget is derived once per call, before any run starts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fluxbench.benchmarks.image_text import ImageTextPairs
from fluxbench.cache import recipe_hash
from fluxbench.errors import ConfigError
from fluxbench.fomo.benchmark import FifBenchmark, open_benchmark
from fluxbench.fomo.streams import fif_manifest, to_experiences
from fluxbench.methods import Method, MethodContext, create_method
from fluxbench.protocols.cpt import data, evaluation
from fluxbench.protocols.cpt.budget import CPU_PROXY, CUDA_PEAK, Budget, derive_budget
from fluxbench.protocols.cpt.mixture import NO_PRETRAINING_MIXTURE, POOLS, check_mixture, sub_batch_sizes
from fluxbench.protocols.cpt.pools import ImageTextPool, MixedBatches, images_to_float
from fluxbench.protocols.cpt.schedule import check_schedule
from fluxbench.protocols.cpt.step import train_task
from fluxbench.protocols.parent import ProtocolCall, run_protocol, run_seeds, seeds_result
from fluxbench.protocols.preflight import preflight
from fluxbench.protocols.setup import method_context, resolve_device
from fluxbench.protocols.summary import format_table
from fluxbench.streams.experience import Experience
from fluxbench.tracking import Tracker, config_hash
from fluxbench.tracking.layout import (
    DATASET_TASK_ARTIFACT,
    DEVIATION_TAG,
    FINGERPRINT_TAG,
)
from fluxbench.tracking.layout import (
    PRETRAINING_POOL_SIZE_TAG as POOL_SIZE_TAG,
)
from fluxbench.tracking.layout import (
    PRETRAINING_POOL_TAG as POOL_TAG,
)

CURVES = ("A_KA", "A_ZS", "gmean")
REFERENCE = "cpt_finetune"  # full fine-tuning: the method whose steps define the budget


def options(cfg: Mapping[str, Any], has_pool: bool) -> tuple[dict[str, Any], str]:
    """The checked protocol options, and the deviation from the spec they imply ('' when none)."""
    proto = dict(cfg["protocol"])
    mixture = check_mixture(proto.get("data_mixture"))
    deviation = ""
    if not has_pool and mixture["pretraining"] > 0:
        deviation = (f"no pretraining pool (protocol.pretraining_pool and benchmark.pretraining_pool are null): "
                     f"data_mixture "
                     f"{'/'.join(f'{mixture[p]:g}' for p in POOLS)} replaced by "
                     f"{'/'.join(f'{NO_PRETRAINING_MIXTURE[p]:g}' for p in POOLS)}")
        mixture = dict(NO_PRETRAINING_MIXTURE)
    clip = proto.get("grad_clip", 1.0)
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0:
        raise ConfigError(f"protocol.grad_clip must be a number >= 0; got {clip!r}")
    return {**proto, "data_mixture": mixture, "scheduler": check_schedule(proto.get("scheduler") or {}),
            "budget": dict(proto.get("budget") or {})}, deviation


class PretrainingLoop:
    """Continual-pretraining seeds over one FiF stream; experience 0 is the zero-shot point."""

    resumable = True

    def __init__(self, cfg: Mapping[str, Any], bench: FifBenchmark, opts: Mapping[str, Any], budget: Budget,
                 deviation: str, pairs: ImageTextPairs | None = None) -> None:
        self.cfg, self.bench, self.opts, self.budget, self.deviation = cfg, bench, opts, budget, deviation
        self.datasets = (*bench.adapt_datasets, *bench.eval_datasets)
        self.pairs = pairs  # the user's pool, decoded once per call (None: the digits pool, or none)
        pool = {"spec": data.pool_spec(cfg), "limit": opts.get("pretraining_pool_limit"),
                **({"digest": pairs.digest()} if pairs is not None else {})}
        self.fingerprint = recipe_hash({"stream": fif_manifest(bench.stream), "pretraining_pool": pool,
                                        "eval": list(bench.eval_datasets)})
        self.seed, self.pools, self.pretraining = 0, [], None

    def num_experiences(self) -> int:
        return len(self.bench.stream.tasks) + 1

    def stream(self, seed: int) -> list[Experience]:
        self.seed = seed
        return to_experiences(self.bench.reader, self.bench.stream)

    def context(self, stream: list[Experience]) -> MethodContext:
        return method_context(self.cfg, num_classes=len(self.bench.stream.class_order))

    def tags(self) -> dict[str, str]:
        measure = CUDA_PEAK if resolve_device(str(self.cfg.get("device", "auto"))).type == "cuda" else CPU_PROXY
        return {"budget.memory_measure": measure, **({DEVIATION_TAG: self.deviation} if self.deviation else {})}

    def begin(self, stream: list[Experience]) -> dict[str, torch.Tensor]:
        T, D = len(stream), len(self.datasets)
        return {"scores": torch.full((T + 1, D), float("nan"), dtype=torch.float64),
                "curves": torch.full((T + 1, len(CURVES)), float("nan"), dtype=torch.float64)}

    def _task_pools(self, method: Method, stream: list[Experience], task: int) -> dict[str, ImageTextPool | None]:
        # built lazily and kept for the seed: a resumed seed rebuilds them from the same files and seeds
        if self.pretraining is None and data.pool_spec(self.cfg):
            size = int(self.cfg["benchmark"].get("image_size", 32))
            spec = self.pairs if self.pairs is not None else data.pool_spec(self.cfg)
            self.pretraining = data.pretraining_pool(spec, self.cfg["data_root"], size, method.tokenize, self.seed,
                                                     self.opts.get("pretraining_pool_limit"))
        while len(self.pools) <= task:
            k = len(self.pools)
            self.pools.append(data.update_pool(self.bench.reader, self.bench.stream, stream[k],
                                               self.bench.caption_seed, method.tokenize))
        return {"pretraining": self.pretraining, "update": self.pools[task],
                "buffer": data.buffer_pool(self.pools[:task])}

    def experience(self, method: Method, stream: list[Experience], i: int, partial: dict[str, torch.Tensor],
                   device: torch.device) -> dict[str, float]:
        if i == 0:
            self.pools = []
        out: dict[str, float] = {}
        if i > 0:
            pools = self._task_pools(method, stream, i - 1)
            sizes = sub_batch_sizes(int(self.opts["batch_size"]), self.opts["data_mixture"],
                                    [p for p, v in pools.items() if v is not None and len(v)])
            batches = MixedBatches(pools, sizes, self.seed, i - 1)
            out["step.loss"] = train_task(method, batches, self.budget.steps_per_task, i - 1, self.opts, device,
                                          method.ctx.amp)
            out |= {f"step.batch.{p}": float(sizes[p]) for p in POOLS}
            out |= {f"step.{k}": float(v) for k, v in method.task_metrics().items()}
        full = i in (0, len(stream))
        subsets = None if full else evaluation.eval_subsets(self.bench.reader, self.datasets, self.opts["eval"],
                                                            self.seed)
        scores = evaluation.score(method.evaluation_model(), self.bench.reader, self.bench.adapt_datasets,
                                  self.bench.eval_datasets, subsets)
        partial["scores"][i] = torch.tensor([scores[f"acc.{n}"] for n in self.datasets], dtype=torch.float64)
        partial["curves"][i] = torch.tensor([scores[c] for c in CURVES], dtype=torch.float64)
        return out | {f"step.{k}": v for k, v in scores.items()}

    def result(self, stream: list[Experience], partial: dict[str, torch.Tensor]) -> tuple[dict[str, float], None, None]:
        curves = partial["curves"].numpy()
        metrics = {c: float(curves[-1, k]) for k, c in enumerate(CURVES)}
        metrics |= {f"{c}_zero_shot": float(curves[0, k]) for k, c in enumerate(CURVES)}
        metrics |= {f"{c}_mean_over_tasks": float(np.mean(curves[1:, k])) for k, c in enumerate(CURVES)}
        return metrics | self.budget.metrics(), None, None

    def artifacts(self, stream: list[Experience], partial: dict[str, torch.Tensor]) -> dict[str, str]:
        """The dataset-by-task table: row t = after task t (0: zero-shot), a column per dataset (its role)."""
        roles = {n: "adapt" for n in self.bench.adapt_datasets} | {n: "eval" for n in self.bench.eval_datasets}
        head = "task," + ",".join(f"{n}:{roles[n]}" for n in self.datasets) + "," + ",".join(CURVES)
        rows = [head] + [",".join([str(t), *(f"{v:.6f}" for v in s), *(f"{v:.6f}" for v in c)])
                         for t, (s, c) in enumerate(zip(partial["scores"].tolist(), partial["curves"].tolist()))]
        return {DATASET_TASK_ARTIFACT: "\n".join(rows) + "\n"}


def measure_budget(cfg: Mapping[str, Any], bench: FifBenchmark, opts: Mapping[str, Any]) -> Budget:
    """The method's steps per task under full fine-tuning's budget, on one working-size batch of task 1."""
    ctx = method_context(cfg, num_classes=len(bench.stream.class_order))
    method = create_method(cfg["method"], ctx)
    reference = method if cfg["method"]["name"] == REFERENCE else create_method({"name": REFERENCE}, ctx)
    exp = to_experiences(bench.reader, bench.stream)[0]
    pool = data.update_pool(bench.reader, bench.stream, exp, bench.caption_seed, method.tokenize)
    index = torch.arange(int(opts["batch_size"])) % len(pool)
    images, tokens = images_to_float(pool.images[index], ctx.device), pool.tokens[index].to(ctx.device)
    return derive_budget(method, reference, images, tokens, opts["budget"], ctx.amp, len(pool))


def pool_tags(cfg: Mapping[str, Any], pairs: ImageTextPairs | None) -> dict[str, str]:
    """Where the pretraining pool came from (and how many pairs a user's pool gave), as parent tags."""
    spec = data.pool_spec(cfg)
    if not spec:
        return {POOL_TAG: "none"}
    if pairs is None:
        return {POOL_TAG: str(spec.get("kind", spec)) if isinstance(spec, Mapping) else str(spec)}
    return {POOL_TAG: pairs.source, POOL_SIZE_TAG: str(len(pairs))}


def run(cfg: Mapping[str, Any], tracker: Tracker) -> dict[str, Any]:
    preflight(cfg, kind="pretraining")
    if cfg["benchmark"].get("kind") != "fomo_in_flux":
        raise ConfigError(f"protocol=continual_pretraining needs an image-text FoMo-in-Flux benchmark (benchmark="
                          f"fomo_digits or fomo_in_flux); got benchmark={cfg['benchmark'].get('name')}")
    opts, deviation = options(cfg, bool(data.pool_spec(cfg)))
    pairs = data.read_pairs(cfg)  # a missing or corrupt pool fails here, in one line, before any run
    if deviation:
        print(f"fluxbench: deviation from the spec: {deviation}", file=sys.stderr)
    bench = open_benchmark(cfg["benchmark"], cfg["data_root"])
    budget = measure_budget(cfg, bench, opts)
    loop = PretrainingLoop(cfg, bench, opts, budget, deviation, pairs)
    label = f"{cfg['method']['name']} on {cfg['benchmark']['name']}"
    tags = {FINGERPRINT_TAG.format(role="evaluation"): loop.fingerprint, **pool_tags(cfg, pairs),
            **({DEVIATION_TAG: deviation} if deviation else {})}
    call = ProtocolCall("continual_pretraining", label, config_hash(cfg, loop.fingerprint), tags,
                        rank_metric="gmean", rank_order="max")
    shown = ["A_KA", "A_ZS", "gmean", "A_KA_zero_shot", "A_ZS_zero_shot"]
    return run_protocol(cfg, tracker, call, lambda parent: seeds_result(
        run_seeds(cfg, loop, tracker, parent, label), lambda agg: format_table({label: agg}, shown)
        + "\n" + json.dumps({k: round(v, 4) for k, v in budget.metrics().items()})))
