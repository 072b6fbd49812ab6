"""Time IBCL's zero-shot model generation against its training (specs/ibcl.md section 8.2-8.3).

    PYTHONPATH=. python perf/ibcl_zero_shot.py [--tasks 5] [--prefs 100] [--out ibcl_zero_shot.csv]

Trains method=ibcl on benchmark=digits_pairs, then times building ``--prefs`` preference models (one sampled
model each: combination, HDR, sampling; no gradient step) and the two-task sweep (after task 1: 11 points x 10
models, evaluated), and writes a CSV row.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fluxbench.methods import create_method
from fluxbench.protocols.preference import sweep
from fluxbench.protocols.preference_metrics import generate_preferences
from fluxbench.protocols.setup import build_stream, load_split, method_context, seed_everything


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--prefs", type=int, default=100)
    parser.add_argument("--out", default="ibcl_zero_shot.csv")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method.hdr_mode=paper")
    args = parser.parse_args(argv)
    with initialize_config_module("fluxbench.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", ["method=ibcl", "benchmark=digits_pairs", *args.overrides]),
                                     resolve=True)
    split = load_split(cfg, "evaluation")
    seed_everything(0)
    stream = build_stream(cfg, split, seed=0)[: args.tasks]
    method = create_method(cfg["method"], method_context(cfg, num_classes=split.num_classes))
    train_s = sweep_s = 0.0
    for i, exp in enumerate(stream):
        began = time.perf_counter()
        method.train_experience(exp)
        train_s += time.perf_counter() - began
        if i == 1:  # the sweep is over two tasks
            began = time.perf_counter()
            sweep(method, stream, 11)
            sweep_s = time.perf_counter() - began
    prefs = generate_preferences(len(stream), args.prefs, seed=0)[-1]
    began = time.perf_counter()
    models = [m for w in prefs for m in method.preference_models(w, num_models=1)]
    build_s = time.perf_counter() - began
    row = {"model_size": cfg["method"]["model_size"], "tasks": len(stream),
           "models_trained": method.models_trained, "batch_updates": method.batch_updates,
           "train_s": round(train_s, 4), "pref_models": len(models), "build_s": round(build_s, 4),
           "sweep_11_s": round(sweep_s, 4), "threads": torch.get_num_threads()}
    print(row)
    path = Path(args.out)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


if __name__ == "__main__":
    sys.exit(main())
