"""The MTIL / X-TAIL protocol: a few-shot, dataset-incremental CLIP stream scored after every task on every dataset.

Each seed trains a CLIP method (``kind = "clip"``: CoDyRA, plain LoRA, full fine-tuning, zero-shot CLIP) on one
dataset per task (:mod:`.clip_stream`), then fills one row of two dataset-by-task accuracy matrices: MTIL (each
dataset in its own label space) and X-TAIL (the union of class prompts, no task id). Transfer, Average, Last and
forgetting come from those matrices (:func:`~fluxbench.protocols.metrics.transfer_average_last`). Per task the
method's diagnostics (CoDyRA: effective rank per LoRA module and its mean, drift ``||theta_t - theta_0||_F``)
are logged as step metrics. Seeds, resume and tracking are the shared core's (:mod:`.parent`, :mod:`.seeds`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fluxbench.methods import Method, MethodContext
from fluxbench.protocols.clip_stream import build_clip_stream, evaluate_row, open_source
from fluxbench.protocols.metrics import transfer_average_last
from fluxbench.protocols.parent import ProtocolCall, run_protocol, run_seeds, seeds_result
from fluxbench.protocols.preflight import preflight
from fluxbench.protocols.setup import method_context
from fluxbench.protocols.summary import format_table
from fluxbench.streams.experience import Experience
from fluxbench.tracking import Tracker, config_hash
from fluxbench.tracking.layout import FINGERPRINT_TAG

SPACES = ("mtil", "xtail")
TABLE = tuple(f"{s}_{m}" for s in SPACES for m in ("transfer", "average", "last", "forgetting"))


class MtilLoop:
    """One seed: the CLIP stream, train on task i, score every dataset in both label spaces."""

    resumable = True

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg, self.protocol = cfg, cfg["protocol"]
        self.source = open_source(cfg)
        self.names = self.source.names
        about = {**self.source.about, "datasets": self.names, "shots": self.protocol["shots"],
                 "test_limit": self.protocol.get("test_limit")}
        self.fingerprint = hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()[:16]

    def num_experiences(self) -> int:
        return len(self.names)

    def stream(self, seed: int) -> list[Experience]:
        return build_clip_stream(self.source, int(self.protocol["shots"]), seed, self.protocol.get("test_limit"))

    def context(self, stream: list[Experience]) -> MethodContext:
        return method_context(self.cfg, num_classes=sum(len(e.classes) for e in stream))

    def tags(self) -> dict[str, str]:
        return {}

    def begin(self, stream: list[Experience]) -> dict[str, torch.Tensor]:
        T = len(stream)
        return {space: torch.full((T, T), float("nan"), dtype=torch.float64) for space in SPACES}

    def experience(self, method: Method, stream: list[Experience], i: int, partial: dict[str, torch.Tensor],
                   device: torch.device) -> dict[str, float]:
        method.train_experience(stream[i])
        mtil, xtail = partial["mtil"].numpy(), partial["xtail"].numpy()  # views: filling them fills the checkpoint
        evaluate_row(method, stream, i, mtil, xtail, device, str(self.protocol["xtail_label_space"]),
                     int(self.protocol["eval_batch_size"]))
        row = {f"{space}_acc_{exp.metadata['dataset']}": float(partial[space][i, j])
               for space in SPACES for j, exp in enumerate(stream)}
        return {"accuracy": float(mtil[i].mean()), "xtail_accuracy": float(xtail[i].mean()), **row,
                **method.diagnostics()}

    def result(self, stream: list[Experience], partial: dict[str, torch.Tensor]
               ) -> tuple[dict[str, float], np.ndarray, list[int]]:
        metrics: dict[str, float] = {}
        for space in SPACES:
            metrics.update({f"{space}_{k}": v for k, v in transfer_average_last(partial[space].numpy()).items()})
        metrics["last_accuracy"] = metrics["mtil_last"]
        return metrics, partial["mtil"].numpy().copy(), [len(e.test) for e in stream]


def run(cfg: Mapping[str, Any], tracker: Tracker) -> dict[str, Any]:
    preflight(cfg, kind="clip")
    loop = MtilLoop(cfg)
    label = f"{cfg['method']['name']} on {cfg['benchmark']['name']}"
    call = ProtocolCall("mtil", label, config_hash(cfg, loop.fingerprint),
                        {FINGERPRINT_TAG.format(role="evaluation"): loop.fingerprint}, rank_metric="mtil_last")
    return run_protocol(cfg, tracker, call, lambda parent: seeds_result(
        run_seeds(cfg, loop, tracker, parent, label), lambda agg: format_table({label: agg}, TABLE)))
