"""Faults as a user meets them, through the command line: concurrent starts on a fresh store, signals,
``kill -9`` with worker processes, and bad environments. Each must end in one line and a store with no run
left RUNNING."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

FLUXBENCH = [sys.executable, "-m", "fluxbench.cli", "run", "progress=false"]
SMALL_TWO_PHASE = ("protocol=two_phase", "method=finetune", "method.epochs=2", "~method.search_space.epochs",
                   "~method.search_space.batch_size", "protocol.n_trials=3", "protocol.tuning_seeds=1",
                   "protocol.num_seeds=2")


STARTED: list[subprocess.Popen] = []


def start(*args: str, cwd: Path) -> subprocess.Popen:
    """A ``fluxbench run`` in its own process group, so that teardown can stop it and its workers."""
    proc = subprocess.Popen([*FLUXBENCH, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _stop_what_a_test_started():
    """A failing test must not leave processes behind that hold the suite's pipes open (a hang, not a failure)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()


def statuses(db: Path, kind: str | None = None) -> list[str]:
    """Run statuses by kind, read-only (the running process keeps writing)."""
    if not db.is_file():
        return []
    query = "select r.status from runs r"
    params: tuple = ()
    if kind:
        query += " join tags t on t.run_uuid = r.run_uuid where t.key = 'fluxbench.kind' and t.value = ?"
        params = (kind,)
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            return [row[0] for row in con.execute(query, params)]
    except sqlite3.OperationalError:  # the schema is still being created
        return []


def failure_reasons(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        return [row[0] for row in con.execute("select value from tags where key = 'fluxbench.failure'")]


def wait_for(condition, timeout: float = 240.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return kids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_eight_runs_started_together_on_a_fresh_store_all_finish_and_duplicates_run_once(tmp_path):
    seeds = [0, 1, 2, 3, 4, 5, 0, 0]  # six configurations, one of them started three times
    procs = [start("protocol=conventional", "method=prototype", "protocol.num_seeds=1", f"seed={s}", cwd=tmp_path)
             for s in seeds]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    db = tmp_path / "mlflow.db"
    assert statuses(db, "protocol") == ["FINISHED"] * 6
    assert statuses(db, "seed") == ["FINISHED"] * 6
    assert sum("skipped" in out for out, _ in outs) == 2  # the two later copies found the first one's result


def test_sigterm_during_a_seed_marks_the_runs_killed_and_the_same_command_resumes(tmp_path):
    # a seed of about 6 s, so that the signal 1 s into the first one lands in it (at 3 epochs a seed took 2.5 s,
    # and a busy machine sometimes saw the first seed's run RUNNING only as it finished)
    args = ("protocol=conventional", "method=finetune", "method.epochs=8", "protocol.num_seeds=2")
    proc = start(*args, cwd=tmp_path)
    db = tmp_path / "mlflow.db"
    wait_for(lambda: "RUNNING" in statuses(db, "seed"), what="a seed run")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert "RUNNING" not in statuses(db)
    assert "KILLED" in statuses(db, "protocol") and "KILLED" in statuses(db, "seed")
    assert any("interrupted by SIGTERM" in reason for reason in failure_reasons(db))
    again = start(*args, cwd=tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert statuses(db, "protocol") == ["FINISHED"] and statuses(db, "seed") == ["FINISHED"] * 2


def test_sigint_in_two_phase_leaves_no_trial_running(tmp_path):
    proc = start(*SMALL_TWO_PHASE, cwd=tmp_path)
    db = tmp_path / "mlflow.db"
    wait_for(lambda: "RUNNING" in statuses(db, "trial"), what="a trial run")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "RUNNING" not in statuses(db)
    # the trial the signal met is KILLED (on a slow machine it may have finished just before)
    assert set(statuses(db, "trial")) <= {"KILLED", "FINISHED"} and statuses(db, "protocol") == ["KILLED"]


def _two_phase_metrics(db: Path) -> dict[str, float]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        (parent,) = [r[0] for r in con.execute(
            "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'fluxbench.kind' and t.value = 'protocol' and r.status = 'FINISHED'")]
        metrics = dict(con.execute("select key, value from latest_metrics where run_uuid = ?", (parent,)).fetchall())
    return {k: v for k, v in metrics.items() if not k.startswith(("wall_time", "peak_memory"))}  # results, not cost


def test_kill_9_with_two_workers_leaves_no_orphan_and_the_rerun_gives_the_same_numbers(tmp_path):
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    killed.mkdir()
    fresh.mkdir()
    args = (*SMALL_TWO_PHASE, "protocol.n_jobs=2")
    proc = start(*args, cwd=killed)
    wait_for(lambda: statuses(killed / "mlflow.db", "seed").count("FINISHED") >= 1, what="a finished tuning seed")
    workers = children_of(proc.pid)
    assert workers, "two_phase with n_jobs=2 runs worker processes"
    proc.kill()
    proc.wait(timeout=60)  # not communicate(): a surviving worker would hold the pipes open for ever
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=60, what="the workers to exit")
    # the workers closed their own runs (the kill may meet them between trials: then none was open)
    assert "RUNNING" not in statuses(killed / "mlflow.db", "trial")

    rerun = start(*args, cwd=killed)
    reference = start(*args, cwd=fresh)
    for p in (rerun, reference):
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
    assert "RUNNING" not in statuses(killed / "mlflow.db")
    assert _two_phase_metrics(killed / "mlflow.db") == _two_phase_metrics(fresh / "mlflow.db")


@pytest.mark.parametrize(("setup", "override", "expected"), [
    (lambda d: (d / "afile").write_text("x"), "tracking.uri=sqlite:///{d}/afile/mlflow.db", "is not a directory"),
    (lambda d: None, "method.epochs=1.5", "method.epochs must be an integer"),
    (lambda d: None, "seed=1.5", "override seed=1.5: Value '1.5' of type 'float' could not be converted to Integer"),
    (lambda d: None, "protocol.num_seeds=two", "protocol.num_seeds=two: Value 'two' of type 'str' could not be"),
    (lambda d: None, "protocol.num_seeds=0", "protocol.num_seeds must be an integer >= 1; got 0"),
    (lambda d: None, "stream.classes_per_epx=2", "Could not override 'stream.classes_per_epx'"),
    (lambda d: None, "stream.scenario=B0-IncX", "scenario"),
    (lambda d: None, "device=cuda:7", "device=cuda:7"),
])
def test_bad_environments_and_values_fail_in_one_line_before_any_run(tmp_path, setup, override, expected):
    setup(tmp_path)
    out = subprocess.run([*FLUXBENCH, "protocol=conventional", "method=finetune", override.format(d=tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert statuses(tmp_path / "mlflow.db") == []  # nothing was started


def test_a_full_store_is_one_line_keeps_the_finished_seed_and_the_rerun_completes(tmp_path):
    from fluxbench.tracking import Tracker

    Tracker(f"sqlite:///{tmp_path}/schema.db", "x")  # how many pages the schema alone takes
    with sqlite3.connect(tmp_path / "schema.db") as con:
        (schema_pages,) = con.execute("PRAGMA page_count").fetchone()
    args = ("protocol=conventional", "method=finetune", "method.epochs=1", "protocol.num_seeds=2")
    capped = subprocess.run([sys.executable, str(Path(__file__).with_name("store_capped.py")), str(schema_pages + 8),
                             *FLUXBENCH[3:], *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert capped.returncode == 2
    lines = capped.stderr.strip().splitlines()
    assert len(lines) == 1 and "database or disk is full" in lines[0], capped.stderr
    db = tmp_path / "mlflow.db"
    # the store filled while the parent aggregated: it is FAILED, and the seeds that finished are kept
    assert statuses(db, "protocol") == ["FAILED"] and "FINISHED" in statuses(db, "seed")
    assert "RUNNING" not in statuses(db)

    rerun = subprocess.run([*FLUXBENCH, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert statuses(db, "protocol") == ["FINISHED"] and statuses(db, "seed") == ["FINISHED"] * 2


def test_a_read_only_working_directory_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only directories")
    tmp_path.chmod(0o555)
    try:
        out = subprocess.run([*FLUXBENCH, "protocol=conventional", "method=prototype"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    finally:
        tmp_path.chmod(0o755)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "read-only" in out.stderr


ORPHAN = """
import os, signal, threading, time
from fluxbench.protocols import workers
workers._ORPHAN_GRACE_S = 1.0
if os.fork() == 0:  # a worker stuck so that SIGTERM does nothing: only the watchdog can end it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(os.getpid(), flush=True)
    threading.Thread(target=workers._watch_parent, args=(os.getppid(),), daemon=True).start()
    time.sleep(3600)
else:
    time.sleep(1.0)
    os._exit(0)  # the parent dies without closing anything, as under kill -9
"""


def test_an_orphaned_worker_that_ignores_sigterm_still_exits_after_the_grace_period():
    out = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True, timeout=60)
    worker = int(out.stdout.split()[0])
    wait_for(lambda: not alive(worker), timeout=30, what="the orphaned worker to exit")
