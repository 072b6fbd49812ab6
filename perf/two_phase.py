"""Wall time of the whole default two-phase protocol on digits, with ``protocol.n_jobs=1`` and ``=2``.

Runs the main job exactly as a user types it::

    fluxbench run protocol=two_phase method=finetune protocol.n_jobs=N

in a fresh directory each time (fresh MLflow store and Optuna study, so nothing is skipped),
and reports wall seconds, CPU seconds (the job and its worker processes) and the speed-up
of ``n_jobs=2`` over ``n_jobs=1``. The pre-trained tiny ViT is built into the cache first and
not timed. The load average is printed too: on a shared machine it explains outliers.
Usage::

    .venv/bin/python perf/two_phase.py                       # finetune, n_jobs 1 and 2, once each
    .venv/bin/python perf/two_phase.py --method ewc --repeat 2 --csv two_phase.csv
    .venv/bin/python perf/two_phase.py --threads 1           # OMP_NUM_THREADS=1 for every process
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def warm_cache() -> None:
    """Build (or find) the pre-trained tiny ViT once, outside the timings."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from fluxbench.protocols.setup import prepare_backbone

    with initialize_config_module("fluxbench.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config"), resolve=True)
    prepare_backbone(cfg)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_job(method: str, n_jobs: int, threads: int | None, extra: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s, last output line) of one main job in a fresh directory."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    args = [sys.executable, "-m", "fluxbench.cli", "run", "protocol=two_phase", f"method={method}",
            f"protocol.n_jobs={n_jobs}", "progress=false", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, wall0 = children_cpu(), time.perf_counter()
        out = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - wall0, children_cpu() - cpu0
    if out.returncode != 0:
        raise SystemExit(f"n_jobs={n_jobs} failed:\n{out.stdout}\n{out.stderr}")
    return wall, cpu, out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="finetune")
    parser.add_argument("--n-jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the job (default: unset)")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. protocol.n_trials=8")
    args = parser.parse_args()

    warm_cache()
    print(f"two_phase, method={args.method}, {os.cpu_count()} cores, threads={args.threads or 'default'}")
    rows = []
    for n_jobs in args.n_jobs:
        for rep in range(args.repeat):
            load = os.getloadavg()[0]
            wall, cpu, last = time_job(args.method, n_jobs, args.threads, args.overrides)
            rows.append({"n_jobs": n_jobs, "repeat": rep, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                         "load_before": round(load, 2)})
            print(f"n_jobs={n_jobs}  wall {wall:7.1f} s  cpu {cpu:7.1f} s  (load average before: {load:.1f})  {last}")
    best = {n: min(r["wall_s"] for r in rows if r["n_jobs"] == n) for n in args.n_jobs}
    for n in (n for n in args.n_jobs if n != 1 and 1 in best):
        print(f"speed-up n_jobs={n} over n_jobs=1: {best[1] / best[n]:.2f}x ({best[1]:.1f} s -> {best[n]:.1f} s)")
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
