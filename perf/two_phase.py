"""Wall time of the whole default two-phase protocol on digits, with ``protocol.n_jobs=1`` and ``=2``, and on Ray.

Runs the main job exactly as a user types it::

    fluxbench run protocol=two_phase method=finetune protocol.n_jobs=N
    fluxbench run protocol=two_phase method=finetune protocol.launcher=ray protocol.ray.workers=N

in a fresh directory each time (fresh MLflow store and Optuna study, so nothing is skipped),
and reports wall seconds, CPU seconds (the job and its worker processes) and the speed-up
of ``n_jobs=2`` over ``n_jobs=1``. The pre-trained tiny ViT is built into the cache first and
not timed. The load average is printed too: on a shared machine it explains outliers.

``--launcher ray``: a local Ray cluster (as many CPUs as the largest N) is started once, outside the timings, and
every job connects to it. Ray's overhead per task is (Ray with 1 worker - local with n_jobs=1) / tasks, where the
tasks are the phase-1 trials and the phase-2 seeds. Usage::

    .venv/bin/python perf/two_phase.py                       # finetune, n_jobs 1 and 2, once each
    .venv/bin/python perf/two_phase.py --launcher local ray  # both, Ray's overhead per task and speed-up
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


def count_tasks(overrides: list[str]) -> int:
    """Phase-1 trials plus phase-2 seeds of the timed job (the trial budget before any cap by the grid)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("fluxbench.conf", version_base="1.3"):
        protocol = compose("config", ["protocol=two_phase", *overrides]).protocol
    return int(protocol.n_trials) + int(protocol.num_seeds)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launcher_args(launcher: str, n_jobs: int, ray_address: str | None) -> list[str]:
    if launcher == "ray":
        return ["protocol.launcher=ray", f"protocol.ray.address={ray_address}", f"protocol.ray.workers={n_jobs}"]
    return [f"protocol.n_jobs={n_jobs}"]


def start_ray(num_cpus: int) -> str:
    """A local Ray cluster owned by this process (stopped when it exits); its address for the jobs."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("FLUXBENCH_")}})
    return ray.get_runtime_context().gcs_address


def time_job(method: str, launcher: list[str], threads: int | None, extra: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s, last output line) of one main job in a fresh directory."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    args = [sys.executable, "-m", "fluxbench.cli", "run", "protocol=two_phase", f"method={method}", *launcher,
            "progress=false", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, wall0 = children_cpu(), time.perf_counter()
        out = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - wall0, children_cpu() - cpu0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(launcher)} failed:\n{out.stdout}\n{out.stderr}")
    return wall, cpu, out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="finetune")
    parser.add_argument("--n-jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--launcher", nargs="+", choices=["local", "ray"], default=["local"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the job (default: unset)")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. protocol.n_trials=8")
    args = parser.parse_args()

    warm_cache()
    address = start_ray(max(args.n_jobs)) if "ray" in args.launcher else None
    print(f"two_phase, method={args.method}, {os.cpu_count()} cores, threads={args.threads or 'default'}")
    rows = []
    for launcher in args.launcher:
        for n_jobs in args.n_jobs:
            for rep in range(args.repeat):
                load = os.getloadavg()[0]
                wall, cpu, last = time_job(args.method, launcher_args(launcher, n_jobs, address), args.threads,
                                           args.overrides)
                rows.append({"launcher": launcher, "n_jobs": n_jobs, "repeat": rep, "wall_s": round(wall, 2),
                             "cpu_s": round(cpu, 2), "load_before": round(load, 2)})
                print(f"{launcher:5s} n_jobs={n_jobs}  wall {wall:7.1f} s  cpu {cpu:7.1f} s  "
                      f"(load average before: {load:.1f})  {last}")
    best = {(r["launcher"], r["n_jobs"]): min(q["wall_s"] for q in rows if (q["launcher"], q["n_jobs"]) ==
                                              (r["launcher"], r["n_jobs"])) for r in rows}
    for (launcher, n), wall in best.items():
        if n != 1 and (launcher, 1) in best:
            one = best[launcher, 1]
            print(f"speed-up {launcher} n_jobs={n} over n_jobs=1: {one / wall:.2f}x ({one:.1f} s -> {wall:.1f} s)")
    if ("ray", 1) in best and ("local", 1) in best:
        tasks = count_tasks(args.overrides)
        overhead = (best["ray", 1] - best["local", 1]) / tasks
        print(f"Ray overhead: {overhead:+.2f} s per task ({tasks} tasks: trials and phase-2 seeds; "
              f"ray 1 worker {best['ray', 1]:.1f} s vs local in-process {best['local', 1]:.1f} s)")
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
