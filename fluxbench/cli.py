"""``fluxbench run ...`` (Hydra), ``fluxbench reproduce``, ``fluxbench report``, ``fluxbench methods``.

User errors (:class:`~fluxbench.errors.FluxbenchError`) print one line and exit with status 2.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from fluxbench.allocator import keep_freed_memory
from fluxbench.errors import ConfigError, FluxbenchError
from fluxbench.protocols.interrupts import Interrupted, exit_status
from fluxbench.protocols.interrupts import install as install_interrupt_handlers

CONF_DIR = Path(__file__).resolve().parent / "conf"
USAGE = """usage: fluxbench run [-m] [key=value ...]          train and evaluate (Hydra overrides; -m sweeps)
       fluxbench reproduce [name [key=value ...]]  run a published configuration (conf/experiment/); no name: list
       fluxbench methods [pattern]                 list registered methods, defaults and search spaces
       fluxbench report [options]                  build the leaderboard from MLflow (see fluxbench report -h)"""


def fail(message: str) -> None:
    print(f"fluxbench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def group_options(group: str) -> list[str]:
    """Options Hydra can compose for a config group (files in conf/ plus registered plug-in methods)."""
    names = {p.stem for p in (CONF_DIR / group).glob("*.yaml")}
    if group == "method":
        from fluxbench.methods.registry import list_methods

        names |= set(list_methods())
    return sorted(names)


def check_group_choices(overrides: list[str]) -> None:
    """Name the valid choices in one line, instead of Hydra's multi-line error."""
    for override in overrides:
        match = re.fullmatch(r"(protocol|method|benchmark|backbone|tracking)=(.+)", override)
        if not match:
            continue
        group, values = match.groups()
        valid = group_options(group)
        for value in values.split(","):
            if value not in valid:
                raise ConfigError(f"unknown {group} {value!r}; choose one of: {', '.join(valid)}")


def register_plugin_configs() -> None:
    """Methods from other packages bring their own YAML; make it a Hydra ``method`` option."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from fluxbench.methods.registry import get_method, list_methods

    store = ConfigStore.instance()
    for name in list_methods():
        if (CONF_DIR / "method" / f"{name}.yaml").is_file():
            continue
        path = get_method(name).config_path()
        if path.is_file():
            store.store(group="method", name=name, node=OmegaConf.load(path))


def check_composes(overrides: list[str]) -> None:
    """Compose the config once before Hydra runs the job: a misspelled key or a value of the wrong type (the
    schemas in ``conf/schema.py``) is one line naming the override, not Hydra's multi-line report."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    with initialize_config_module("fluxbench.conf", version_base="1.3"):
        try:
            compose("config", [o for o in overrides if not o.startswith("-")])
        except HydraException as err:
            cause = err.__cause__ if err.__cause__ is not None else err
            head = str(err).strip().splitlines()[0].rstrip(".")
            detail = str(cause).strip().splitlines()[0]
            raise ConfigError(head if detail == head else f"{head}: {detail}") from None


def prepare_store(overrides: list[str]) -> None:
    """Create (and migrate) the tracking store once, before parallel jobs race to do it."""
    from hydra import compose, initialize_config_module

    from fluxbench.tracking import Tracker

    fixed = [o for o in overrides if not o.startswith("-") and "," not in o.partition("=")[2]]
    with initialize_config_module("fluxbench.conf", version_base="1.3"):
        tracking = compose("config", [o for o in fixed if o.startswith("tracking")]).tracking
    Tracker(tracking.uri, tracking.experiment, tracking.artifact_location)


def run_command(args: list[str]) -> dict[str, Any] | None:
    """``fluxbench run``; returns the protocol's result and the resolved config (a single run; None for -m)."""
    import hydra
    from omegaconf import DictConfig, OmegaConf

    import fluxbench.methods  # noqa: F401  (registers in-tree methods)
    from fluxbench.protocols import with_protocol_defaults

    args = with_protocol_defaults(args)
    install_interrupt_handlers()
    check_group_choices([a for a in args if not a.startswith("-")])
    register_plugin_configs()
    if "-m" in args or "--multirun" in args:
        prepare_store(args)
    else:
        check_composes(args)

    outcome: dict[str, Any] = {}

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        from fluxbench.methods.registry import validate_hyperparameters
        from fluxbench.methods.training import check_compile
        from fluxbench.protocols import get_protocol
        from fluxbench.protocols.ray_pool import check_launcher
        from fluxbench.protocols.search import check_study_storage
        from fluxbench.tracking import Tracker

        try:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            validate_hyperparameters(resolved["method"])  # before touching the store
            check_compile(str(resolved.get("compile", "none")))
            check_launcher(resolved)  # a Ray cluster that does not answer: one line, nothing written
            check_study_storage(resolved)  # before the tracker creates a local store for a call that cannot run
            tracking = resolved["tracking"]
            tracker = Tracker(tracking["uri"], tracking["experiment"], tracking.get("artifact_location"))
            outcome.update(cfg=resolved, result=get_protocol(resolved["protocol"]["name"])(resolved, tracker))
        except FluxbenchError as err:
            fail(str(err))
        except Interrupted as err:
            print(f"fluxbench: {err}: the open runs are marked KILLED; the same command resumes them",
                  file=sys.stderr)
            raise SystemExit(exit_status(err)) from None

    sys.argv = [sys.argv[0], *args]
    _main()
    return outcome or None


def methods_command(args: list[str]) -> None:
    import yaml

    import fluxbench.methods  # noqa: F401
    from fluxbench.methods.registry import get_method, list_methods, method_config

    for name in list_methods(args[0] if args else "*"):
        cfg = method_config(name)
        space = cfg.pop("search_space", {}) or {}
        cfg.pop("name", None)
        origin = get_method(name).__module__
        print(f"{name}  ({origin})")
        print("  defaults: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
        print("  search space: " + (yaml.safe_dump(space, default_flow_style=True, width=1000).strip() if space else
                                    "(none)"))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fluxbench never downloads at run time
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # seeds are read back from the store
    # idle OpenMP threads yield instead of spinning: small models on a busy machine otherwise slow down 10x+
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("PGCONNECT_TIMEOUT", "5")  # a PostgreSQL store that does not answer fails in seconds
    keep_freed_memory()  # large CPU batches reuse freed memory instead of page-faulting
    for noisy in ("timm", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # it logs a store failure with its traceback before raising it; fluxbench reports it in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            run_command(rest)
        elif command == "reproduce":
            from fluxbench.reproduce import reproduce_command

            reproduce_command(rest, run_command)
        elif command == "methods":
            methods_command(rest)
        elif command == "report":
            from fluxbench.reports.cli import report_command

            report_command(rest)
        else:
            fail(f"unknown command {command!r}\n{USAGE}")
    except FluxbenchError as err:
        fail(str(err))


if __name__ == "__main__":
    main()
