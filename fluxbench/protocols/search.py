"""Phase-1 hyperparameter search: an Optuna study in a database beside the MLflow store.

Optuna is used directly (the Hydra Optuna sweeper pins an old Optuna). The space comes
from ``method.search_space`` (``{choices: [...]}`` or ``{low, high, log, step}``); the
sampler from ``protocol.sampler``:

- ``grid``: every combination, in an order shuffled by ``protocol.sampler_seed`` (as Optuna's
  ``GridSampler`` does); the budget is capped at the grid size.
- ``random``: configuration ``c`` is drawn with its own RNG seeded by ``(sampler_seed, c)``,
  as the GTEP code does; a finite space is sampled without repetition.
- ``tpe``: Optuna's ``TPESampler``, seeded per worker so parallel workers do not propose alike.

Grid and random configurations are enqueued once, when the study is created, so any
number of processes (or a resumed call) pop each one exactly once; a lock serialises
claims (a file lock on one machine, an advisory lock on a PostgreSQL study, shared by every
machine). A trial left RUNNING by a killed process (its process is gone) is marked FAIL with
``interrupted`` and its values are enqueued again, so it re-runs and is neither counted nor
duplicated. Trials that fail for a real reason (a diverging loss) count toward the budget.

Workers on other machines (``protocol.launcher=ray``) cannot be checked by process id, so there the study's
storage beats (Optuna's heartbeat): a trial whose worker stops beating is failed by Optuna and enqueued again by
its ``RetryFailedTrialCallback``; workers wait for running trials before they stop, so a retry is never left
behind.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fluxbench.errors import ConfigError, DataError
from fluxbench.tracking import stores

SAMPLERS = ("grid", "random", "tpe")
HOST = socket.gethostname()
GRACE_BEATS = 4  # a trial is stale after this many missed heartbeats


def _distribution(name: str, entry: Any):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    where = f"method.search_space.{name}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be {{choices: [...]}} or {{low: .., high: .., log: .., step: ..}}; "
                          f"got {entry!r}")
    if set(entry) == {"choices"}:
        if not entry["choices"]:
            raise ConfigError(f"{where}.choices is empty; give at least one value")
        return CategoricalDistribution(list(entry["choices"]))
    unknown = set(entry) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(entry):
        raise ConfigError(f"{where} needs low and high (and optionally log, step); got keys {sorted(entry)}")
    low, high, log, step = entry["low"], entry["high"], bool(entry.get("log", False)), entry.get("step")
    try:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step or 1)):
            return IntDistribution(low, high, log=log, step=step or 1)
        return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def search_distributions(space: Mapping[str, Any] | None) -> dict[str, Any]:
    """Optuna distributions for ``method.search_space`` (sorted by name, so order never matters)."""
    return {name: _distribution(name, entry) for name, entry in sorted((space or {}).items())}


def _values(name: str, dist: Any) -> list[Any] | None:
    """Every value of a discrete distribution; ``None`` for a continuous one."""
    if hasattr(dist, "choices"):
        return list(dist.choices)
    if dist.step is None:
        return None
    n = int(math.floor((dist.high - dist.low) / dist.step + 1e-9)) + 1
    return [dist.low + k * dist.step for k in range(n)]


def grid_size(dists: Mapping[str, Any]) -> int | None:
    """Number of distinct configurations, or ``None`` when some range is continuous."""
    size = 1
    for name, dist in dists.items():
        values = _values(name, dist)
        if values is None:
            return None
        size *= len(values)
    return size


def grid_points(dists: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    """The whole grid, shuffled by ``seed``."""
    axes = {}
    for name, dist in dists.items():
        values = _values(name, dist)
        if values is None:
            raise ConfigError(f"protocol.sampler=grid needs discrete values, but method.search_space.{name} is a "
                              "continuous range; give it choices or a step, or use protocol.sampler=random")
        axes[name] = values
    points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    order = np.random.default_rng(seed).permutation(len(points))
    return [points[i] for i in order]


def _draw(dist: Any, rng: np.random.Generator) -> Any:
    if hasattr(dist, "choices"):
        return dist.choices[int(rng.integers(len(dist.choices)))]
    values = _values("", dist)
    if values is not None and not dist.log:
        return values[int(rng.integers(len(values)))]
    low, high = (math.log(dist.low), math.log(dist.high)) if dist.log else (dist.low, dist.high)
    x = float(rng.uniform(low, high))
    x = math.exp(x) if dist.log else x
    return int(min(max(round(x), dist.low), dist.high)) if isinstance(dist.low, int) else x


def random_points(dists: Mapping[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations; configuration ``c`` comes from an RNG seeded by ``(seed, c)``, without repeats."""
    points: list[dict[str, Any]] = []
    for c in range(n):
        rng = np.random.default_rng([seed, c])
        point = {name: _draw(dist, rng) for name, dist in dists.items()}
        while point in points:
            point = {name: _draw(dist, rng) for name, dist in dists.items()}
        points.append(point)
    return points


def plan(dists: Mapping[str, Any], sampler: str, n_trials: int, seed: int) -> tuple[int, list[dict[str, Any]] | None]:
    """The trial budget and, for grid and random, the configurations to enqueue (``None`` for TPE)."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"protocol.sampler={sampler!r} is unknown; choose one of: {', '.join(SAMPLERS)}")
    if int(n_trials) < 1:
        raise ConfigError(f"protocol.n_trials must be at least 1; got {n_trials}")
    if not dists:
        return 1, [{}]  # nothing to tune: exactly one trial, with the defaults
    size = grid_size(dists)
    budget = int(n_trials) if size is None else min(int(n_trials), size)
    if sampler == "grid":
        return budget, grid_points(dists, seed)[:budget]
    if sampler == "random":
        return budget, random_points(dists, budget, seed)
    return budget, None


def storage_url(tracking_uri: str, explicit: str | None = None) -> str:
    """The study database: ``protocol.study_storage``, or ``optuna.db`` beside a local MLflow store."""
    if explicit:
        return str(explicit)
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("", "file"):
        return f"sqlite:///{Path(parsed.path or tracking_uri).resolve().parent / 'optuna.db'}"
    raise ConfigError(f"tracking.uri={stores.redact(tracking_uri)} is not a local store, so fluxbench cannot put the "
                      "Optuna study beside it; set protocol.study_storage to a database URL every worker reaches "
                      "(e.g. postgresql://user@host/optuna)")


def check_study_storage(cfg: Mapping[str, Any]) -> None:
    """A protocol with a study: its database is named (or implied) and, on a server, answers; one line if not."""
    protocol = cfg.get("protocol") or {}
    if "study_storage" in protocol:
        stores.check_reachable(storage_url(cfg["tracking"]["uri"], protocol.get("study_storage")),
                               "protocol.study_storage")


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 120}}
    if stores.scheme(url) == "postgresql":  # a restarted server: reconnect instead of failing on a dead connection
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": stores.CONNECT_TIMEOUT_S}}
    return {}


def _process_token(pid: int) -> str:
    """``pid:start-time`` on Linux (robust to pid reuse), else the pid alone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return str(pid)


def _alive(token: str) -> bool:
    pid = int(token.split(":")[0])
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return ":" not in token or _process_token(pid) == token


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """A study-storage failure is one line naming the storage; a PostgreSQL restart is waited out first."""

    @functools.wraps(method)
    def call(self: SearchStudy, *args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        where = f"the Optuna study storage {stores.redact(self.url)}"
        try:
            return stores.retry_disconnects(self.url, f"{where} ({method.__name__})",
                                            lambda: method(self, *args, **kwargs))
        except SQLAlchemyError as err:
            cause = getattr(err, "orig", None) or err
            reason = next((line for line in str(cause).splitlines() if line.strip()), type(err).__name__)
            raise DataError(f"{where} failed ({method.__name__}): {reason[:200]}") from err

    return call


class SearchStudy:
    """One Optuna study shared by every process of one ``two_phase`` call (and by its resumption)."""

    def __init__(self, url: str, name: str, dists: Mapping[str, Any], sampler: str, seed: int, budget: int,
                 lock_path: Path, worker: int = 0, direction: str = "maximize", heartbeat_s: int | None = None
                 ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.dists, self.sampler_name, self.budget, self.lock_path = dict(dists), sampler, budget, lock_path
        self.direction = direction  # "minimize" for errors (TTA's mean_error)
        self.heartbeat_s = heartbeat_s
        self.url = url
        self._open(name, seed)
        if sampler == "tpe":  # a seed per worker and per resumption: parallel or resumed workers propose anew
            derived = np.random.default_rng([seed, worker, len(self.trials())])
            self.study.sampler = optuna.samplers.TPESampler(seed=int(derived.integers(2**31)))

    @_guarded
    def _open(self, name: str, seed: int) -> None:
        import optuna
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

        with self._lock():  # concurrent calls (a multirun over methods) share one database: create it once
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna since 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                beat = {} if self.heartbeat_s is None else {
                    "heartbeat_interval": int(self.heartbeat_s), "grace_period": GRACE_BEATS * int(self.heartbeat_s),
                    "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback()}
                self.storage = storage = RDBStorage(self.url, engine_kwargs=_engine_kwargs(self.url), **beat)
            self.study = optuna.create_study(storage=storage, study_name=name, direction=self.direction,
                                             sampler=optuna.samplers.RandomSampler(seed=seed), load_if_exists=True)
        self._study_id = storage.get_study_id_from_name(name)

    def _lock(self):
        return stores.store_lock(self.url, "optuna study", self.lock_path, key="protocol.study_storage")

    # -- setting up (the calling process, before any worker starts) ---------------------------
    @_guarded
    def prepare(self, points: list[dict[str, Any]] | None) -> list[int]:
        """Enqueue planned configurations not yet in the study; re-queue trials whose process died."""
        from optuna.trial import TrialState

        with self._lock():
            trials = self.study.get_trials(deepcopy=False)
            planned = {t.user_attrs.get("plan") for t in trials}
            for index, point in enumerate(points or []):
                if index not in planned:
                    self.study.enqueue_trial(point, user_attrs={"plan": index})
            interrupted = []
            for t in trials:
                token = t.user_attrs.get("process")
                if t.state == TrialState.RUNNING and t.user_attrs.get("host", HOST) == HOST and not (
                        token and _alive(token)):
                    self._requeue(t)
                    interrupted.append(t.number)
        return interrupted

    def _requeue(self, trial: Any) -> None:
        from optuna.trial import TrialState

        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)
        self.storage.set_trial_user_attr(trial_id, "interrupted", "its process ended before the trial finished")
        self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        origin = trial.user_attrs.get("origin", trial.number)
        self.study.enqueue_trial(dict(trial.params), user_attrs={"origin": origin})

    @_guarded
    def interrupt(self, trial: Any) -> None:
        """A trial stopped by a signal: not counted, and queued to run again when the call resumes."""
        with self._lock():
            self._requeue(trial)

    # -- workers -------------------------------------------------------------------------
    def counted(self, trials: list[Any]) -> int:
        """Trials that used up budget: finished, or failed for a reason other than an interruption (a trial
        failed for a lost heartbeat is interrupted too: its retry names it ``failed_trial``)."""
        from optuna.trial import TrialState

        retried = {t.system_attrs.get("failed_trial") for t in trials}
        return sum(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "interrupted" not in t.user_attrs
                                                      and t.number not in retried) for t in trials)

    @_guarded
    def claim(self) -> Any | None:
        """The next trial to run (with this process recorded as its owner), or ``None`` when the budget is spent.
        With a heartbeat, a worker waits while trials still run elsewhere: one whose worker died comes back."""
        while True:
            with self._lock():
                trial, running = self._claim_once()
            if trial is not None or not (running and self.heartbeat_s):
                return trial
            time.sleep(min(1.0, self.heartbeat_s / 2))

    def _claim_once(self) -> tuple[Any | None, int]:
        import optuna
        from optuna.trial import TrialState

        if self.heartbeat_s:
            optuna.storages.fail_stale_trials(self.study)  # runs the retry callback for each stale trial
        trials = self.study.get_trials(deepcopy=False)
        if self.heartbeat_s:
            self._beat_for_dead_claims(trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if not waiting and (self.sampler_name != "tpe" or self.counted(trials) + running >= self.budget):
            return None, running
        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for Study.optimize; ask/tell beats
            warnings.simplefilter("ignore", UserWarning)
            trial = self.study.ask(self.dists)
        if self.heartbeat_s:
            self.storage.record_heartbeat(trial._trial_id)  # noqa: SLF001  (beat at once: never a silent RUNNING)
            trial.set_user_attr("claimed_as", trial.number)  # a RUNNING trial without it is a claim cut short
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("process", _process_token(os.getpid()))
        trial.set_user_attr("origin", trial.user_attrs.get("origin", trial.number))
        return trial, running

    def _beat_for_dead_claims(self, trials: list[Any]) -> None:
        """A worker killed between ``ask`` and its first heartbeat leaves a RUNNING trial with no heartbeat and no
        owner: Optuna's stale check skips trials that never beat, so every worker would wait for it forever. Under
        the lock no claim is half-done, so such a trial is dead: beat once for it, and the stale check fails it after
        the grace period and the retry callback queues it again, as for any worker that stopped beating."""
        from optuna.trial import TrialState

        # the marks hold the trial's own number: a retry inherits its failed trial's user attributes
        for t in trials:
            if (t.state == TrialState.RUNNING and t.user_attrs.get("claimed_as") != t.number
                    and t.user_attrs.get("dead_claim") != t.number):
                self.storage.record_heartbeat(t._trial_id)  # noqa: SLF001  (the storage's key)
                self.storage.set_trial_user_attr(t._trial_id, "dead_claim", t.number)  # noqa: SLF001

    @contextmanager
    def beating(self, trial: Any) -> Iterator[None]:
        """Record the trial's heartbeat every ``heartbeat_s`` while it runs (nothing without a heartbeat)."""
        if not self.heartbeat_s:
            yield
            return
        stop = threading.Event()
        trial_id = trial._trial_id  # noqa: SLF001  (the storage's key; Optuna's own heartbeat uses it too)

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                self.storage.record_heartbeat(trial_id)

        thread = threading.Thread(target=beat, name="fluxbench-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @_guarded
    def complete(self, trial: Any, value: float, attrs: Mapping[str, Any]) -> None:
        for key, val in attrs.items():
            trial.set_user_attr(key, val)
        self.study.tell(trial, value)

    @_guarded
    def fail(self, trial: Any, reason: str, attrs: Mapping[str, Any] | None = None) -> None:
        from optuna.trial import TrialState

        for key, val in {"failure": reason, **(attrs or {})}.items():
            trial.set_user_attr(key, val)
        self.study.tell(trial, state=TrialState.FAIL)

    # -- after the workers ---------------------------------------------------------------
    @_guarded
    def trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def wait_for_running(self, poll_s: float = 1.0) -> None:
        """Wait for trials still running in live processes on this machine (e.g. a concurrent call)."""
        from optuna.trial import TrialState

        def live() -> bool:
            return any(t.state == TrialState.RUNNING and t.user_attrs.get("host") == HOST
                       and _alive(t.user_attrs.get("process", "0")) for t in self.trials())

        while live():
            time.sleep(poll_s)

    def best(self) -> Any | None:
        """The best finished trial (the earliest of equals; the lowest value when minimizing), or ``None``."""
        from optuna.trial import TrialState

        done = [t for t in self.trials() if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)]
        sign = -1.0 if self.direction == "minimize" else 1.0
        return max(done, key=lambda t: (sign * t.value, -t.number)) if done else None
