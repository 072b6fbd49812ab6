"""Everything that can be checked before the first MLflow run is created, checked there.

A bad value found after a parent run has started would leave a FAILED run behind for nothing (or, before
this module, a RUNNING one); so the method's hyperparameters and kind, the device, the checkpoint
directory and the backbone's weights are checked first, each failing in one line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fluxbench.errors import ConfigError, DataError
from fluxbench.methods.registry import get_method, list_methods, validate_hyperparameters
from fluxbench.protocols.setup import prepare_backbone, resolve_device

PROTOCOL_FOR_KIND = {"supervised": "conventional or two_phase", "tta": "online_tta", "clip": "mtil",
                     "pretraining": "continual_pretraining"}
KIND_WORD = {"supervised": "supervised (continual-learning)", "tta": "test-time", "clip": "CLIP (multimodal)",
             "pretraining": "continual-pretraining"}


def check_method_kind(cfg: Mapping[str, Any], kind: str) -> None:
    name, protocol = cfg["method"]["name"], cfg["protocol"]["name"]
    actual = get_method(name).kind
    if actual != kind:
        fitting = [m for m in list_methods() if get_method(m).kind == kind]
        raise ConfigError(f"method {name!r} is not a {KIND_WORD[kind]} method; protocol={protocol} runs: "
                          f"{', '.join(fitting)} (run {name!r} with protocol={PROTOCOL_FOR_KIND.get(actual, '?')})")


def check_writable_dir(path: str | Path, key: str) -> None:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{key}={path}: cannot create it ({err.strerror}); point {key} at a writable directory") \
            from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataError(f"{key}={path} is read-only; point {key} at a writable directory")


# integer settings outside the method node, with their least value; a protocol checks the ones it has
INTEGER_KEYS = {"seed": 0, "protocol.num_seeds": 1, "protocol.tuning_seeds": 1, "protocol.n_trials": 1,
                "protocol.n_jobs": 1, "protocol.sampler_seed": 0, "protocol.batch_size": 1,
                "protocol.prefs_per_task": 1, "protocol.preference_seed": 0, "protocol.sweep_points": 2,
                "protocol.shots": 1, "protocol.eval_batch_size": 1}


def check_integer_settings(cfg: Mapping[str, Any]) -> None:
    """``seed=1.5`` or ``protocol.num_seeds=abc`` fail here in one line, not as a traceback from ``int()``."""
    for key, least in INTEGER_KEYS.items():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            continue
        if isinstance(node, bool) or not isinstance(node, int) or node < least:
            raise ConfigError(f"{key} must be an integer >= {least}; got {node!r}")


def preflight(cfg: Mapping[str, Any], kind: str) -> None:
    """One-line errors for everything a protocol call can know to be wrong before it starts a run."""
    check_integer_settings(cfg)
    validate_hyperparameters(cfg["method"])
    check_method_kind(cfg, kind)
    resolve_device(str(cfg.get("device", "auto")))
    check_writable_dir(cfg["tracking"]["checkpoint_dir"], "tracking.checkpoint_dir")
    prepare_backbone(cfg)
