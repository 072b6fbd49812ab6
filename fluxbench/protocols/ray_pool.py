"""Ray as the engine for trials and seeds (``protocol.launcher=ray``): the same interface as :class:`WorkerPool`.

Each submitted call is one Ray task that declares ``protocol.ray.num_cpus`` / ``num_gpus``; Ray places it, and
re-runs it (``max_retries``) when its worker dies. Nothing here schedules: phase-1 workers claim trials from the
shared Optuna study (whose heartbeat re-queues a trial a dead worker held), phase-2 seeds are one task each.

``protocol.ray.address``: ``auto`` (the cluster this machine joined with ``ray start``), ``local`` (start a
throw-away one in this process) or a head node's ``host:port``. A process already connected (``ray.init`` by the
caller) keeps its connection. An address that does not answer fails in seconds, before any run is written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from fluxbench.errors import ConfigError

DEFAULT_PORT = 6379  # ray start --head's GCS port
PROBE_TIMEOUT_S = 3.0
CLOSE_TIMEOUT_S = 60.0
FORWARDED_ENV = ("FLUXBENCH_", "HF_HUB_OFFLINE", "OMP_WAIT_POLICY")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host:
        return port, DEFAULT_PORT
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"protocol.ray.address={address!r} is not auto, local or host:port") from None


def _unreachable(address: str, why: str) -> ConfigError:
    return ConfigError(f"protocol.ray.address={address}: no Ray cluster answers there ({why}); check that "
                       "`ray start --head` runs on that node, the address and port (ray status prints them), and "
                       "that this machine can reach it")


def probe(address: str) -> None:
    """Ask the head's GCS for its cluster id, within seconds: Ray itself retries for a minute or more, and a bare
    TCP connect is not enough (a proxy may accept it)."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc  # Ray's own stubs (Ray ships grpc)

    host, port = _host_port(address)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=PROBE_TIMEOUT_S,
                              metadata=_auth_metadata())
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise ConfigError(
                    f"protocol.ray.address={address}: the Ray cluster there requires token authentication and this "
                    "machine's token is missing or differs; copy the head node's token (`ray get-auth-token` "
                    "prints it) to ~/.ray/auth_token or RAY_AUTH_TOKEN, or start the cluster with "
                    "RAY_AUTH_MODE=disabled") from None
            raise _unreachable(address, f"{err.code().name.lower()}: {err.details()}") from None


def _auth_metadata() -> tuple[tuple[str, str], ...]:
    """The token header ``ray.init`` itself would send (recent Ray enables token authentication whenever a token
    is found, in RAY_AUTH_TOKEN or ~/.ray/auth_token): the probe must ask as the real connection will."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
        from ray._private.authentication.grpc_authentication_client_interceptor import (
            _get_authentication_metadata_tuple,
        )
    except ImportError:  # a Ray without token authentication
        return ()
    quiet = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warning is not the user's error, nor a line to read
    try:
        if not maybe_enable_token_auth_if_token_available(warn_if_disabled=False):
            return ()
    finally:
        quiet.setLevel(level)
    return _get_authentication_metadata_tuple()


def connect(address: str, num_cpus: int | None = None) -> None:
    """Join (or start: ``local``, with ``num_cpus`` or all of them) the Ray cluster named by ``address``; a no-op
    when this process is already connected."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # fluxbench runs offline
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False,
                              "runtime_env": {"env_vars": forwarded_env()}}
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
        return
    try:
        probe(_resolve(address))
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise _unreachable(address, str(err).splitlines()[0].rstrip(".")) from None


def forwarded_env() -> dict[str, str]:
    """fluxbench's own settings (the cache of pre-trained backbones, ...) reach the workers as the caller set them."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


def _resolve(address: str) -> str:
    """``auto``: the head this machine's ``ray start`` recorded (RAY_ADDRESS first), as Ray itself resolves it."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address_or_die  # Ray's own lookup for "auto"

    return canonicalize_bootstrap_address_or_die("auto")


def _run_task(fn: Callable[..., Any], threads: int, cwd: str, *args: Any) -> Any:
    """One task on a Ray worker: in the caller's directory (relative store paths mean the same, as for a local
    process; on a cluster, a shared file system), as many torch threads as CPUs declared, the methods registered."""
    import torch

    import fluxbench.methods  # noqa: F401  (registers in-tree methods)
    from fluxbench.allocator import keep_freed_memory

    keep_freed_memory()
    os.chdir(cwd)
    torch.set_num_threads(threads)
    return fn(*args)


class RayPool:
    """Trials and seeds as Ray tasks with declared resources; ``n_jobs`` is how many trials are in flight."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        import ray

        connect(str(settings["address"]))
        cpus, gpus = float(settings["num_cpus"]), float(settings["num_gpus"])
        if cpus <= 0 or gpus < 0:
            raise ConfigError(f"protocol.ray.num_cpus must be > 0 and num_gpus >= 0; got {cpus}, {gpus}")
        self._threads = max(1, int(cpus))
        self._task = ray.remote(_run_task).options(num_cpus=cpus, num_gpus=gpus,
                                                  max_retries=int(settings["max_retries"]))
        self.n_jobs = int(settings["workers"] or self._capacity(cpus, gpus))
        self._refs: list[Any] = []

    @staticmethod
    def _capacity(cpus: float, gpus: float) -> int:
        """How many tasks the cluster fits side by side (by CPUs, and by GPUs when a task needs one)."""
        import ray

        total = ray.cluster_resources()
        fits = [total.get("CPU", 0.0) / cpus] + ([total.get("GPU", 0.0) / gpus] if gpus else [])
        return max(1, int(min(fits)))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        ref = self._task.remote(fn, self._threads, os.getcwd(), *args)
        self._refs.append(ref)
        return ref.future()

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Any]:
        return [job.result() for job in [self.submit(fn, *args) for args in zip(*iterables)]]

    def close(self, interrupted: bool = False) -> None:
        """After an interrupt, cancel the tasks (a KeyboardInterrupt in each: its runs are marked KILLED) and wait
        for them; the connection stays for the next call of this process."""
        import ray

        if interrupted and self._refs:
            for ref in self._refs:
                ray.cancel(ref)
            ray.wait(self._refs, num_returns=len(self._refs), timeout=CLOSE_TIMEOUT_S)
        self._refs = []


def make_pool(protocol: Mapping[str, Any]) -> Any | None:
    """The pool for ``protocol.launcher``: Ray, ``protocol.n_jobs`` local processes, or ``None`` (this process)."""
    from fluxbench.protocols.workers import WorkerPool

    launcher = protocol.get("launcher", "local")
    if launcher == "ray":
        return RayPool(protocol["ray"])
    if launcher != "local":
        raise ConfigError(f"protocol.launcher={launcher!r} is unknown; choose local or ray")
    return WorkerPool(int(protocol["n_jobs"])) if int(protocol["n_jobs"]) > 1 else None


def check_launcher(cfg: Mapping[str, Any]) -> None:
    """Before the store is touched: an unknown launcher or a Ray cluster that does not answer is one line."""
    protocol = cfg.get("protocol", {})
    launcher = protocol.get("launcher", "local")
    if launcher not in ("local", "ray"):
        raise ConfigError(f"protocol.launcher={launcher!r} is unknown; choose local or ray")
    if launcher == "ray":
        connect(str(protocol["ray"]["address"]))
