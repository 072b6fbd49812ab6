"""two_phase for test-time methods: each phase's corruptions, its online loop, and the leakage checks.

TTA hyperparameters tuned on the stream that is reported flatter the method (TTAB, "On Pitfalls of
Test-time Adaptation", ICML 2023). Here phase 1 runs the trials on ``benchmark.corruptions.tuning_names``
(null: the four corruptions ImageNet-C and CIFAR-10-C were released with for exactly this, speckle_noise,
gaussian_blur, spatter, saturate) and phase 2 the selected values on ``benchmark.corruptions.names`` (null:
the standard 15). Everything else is shared: the source model, the clean images (corrupted by the engine, or
read from the release, as the released extra sets are made from the same images), severities, stream
setting, batch size and online evaluation. What keeps the phases apart is the corruption, so a corruption
named in both is refused, and so is any image (by content) that both phases would score.

The loop of each phase is :class:`~fluxbench.protocols.online_tta.TestTimeLoop` over a view of the config
whose ``corruptions.names`` are that phase's; the seed runs log that view, so a tuning seed's params say
which corruptions it saw.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from fluxbench.errors import ConfigError, LeakageError
from fluxbench.methods.registry import get_method
from fluxbench.protocols.online_tta import TestTimeLoop
from fluxbench.protocols.setup import resolve_device
from fluxbench.protocols.tta_data import load_domains
from fluxbench.streams.corruptions import CORRUPTIONS, HELD_OUT_CORRUPTIONS
from fluxbench.tracking import layout as L

# the protocol settings a TTA seed depends on (kept in its config, hence in its hash)
TTA_PROTOCOL_KEYS = ("batch_size", "online_eval", "speed_measure", "relative_speed")
TTA_SELECTION_METRICS = ("mean_error", "mean_error_at_5")  # lower is better
TTA_HEADLINE = ("mean_error", "offline_mean_error", "mean_error_at_5")


def is_tta(cfg: Mapping[str, Any]) -> bool:
    return get_method(cfg["method"]["name"]).kind == "tta"


def phase_names(cfg: Mapping[str, Any], phase: str) -> list[str]:
    """The corruptions of ``phase`` (``tuning`` or ``evaluation``), defaults filled in."""
    opts = cfg["benchmark"].get("corruptions") or {}
    if phase == L.PHASE_TUNING:
        return [str(n) for n in (opts.get("tuning_names") or HELD_OUT_CORRUPTIONS)]
    return [str(n) for n in (opts.get("names") or CORRUPTIONS)]


def phase_config(cfg: Mapping[str, Any], phase: str) -> dict[str, Any]:
    """``cfg`` with ``benchmark.corruptions.names`` set to the corruptions of ``phase``."""
    out = copy.deepcopy(dict(cfg))
    out["benchmark"]["corruptions"]["names"] = phase_names(cfg, phase)
    return out


def check_config(cfg: Mapping[str, Any]) -> None:
    """The TTA settings of a two_phase call, and the domain split, before anything runs."""
    protocol, benchmark = cfg["protocol"], cfg["benchmark"]
    if not benchmark.get("corruptions"):
        raise ConfigError(f"benchmark {benchmark.get('name')!r} defines no corruptions; two_phase with a test-time "
                          "method needs a TTA benchmark such as benchmark=digits_c, cifar10_c or imagenet_c")
    if protocol["selection_metric"] not in TTA_SELECTION_METRICS:
        raise ConfigError(f"protocol.selection_metric={protocol['selection_metric']!r} does not score a test-time "
                          f"method; use {' or '.join(TTA_SELECTION_METRICS)} (protocol=two_phase_tta sets mean_error)")
    if protocol.get("batch_size") is None:
        raise ConfigError("protocol.batch_size is not set; test-time methods need the online batch size "
                          "(protocol=two_phase_tta sets 64)")
    check_domains_disjoint(cfg)


def check_domains_disjoint(cfg: Mapping[str, Any]) -> None:
    """Refuse a corruption named in both phases (one line, naming it)."""
    tuning, evaluation = phase_names(cfg, L.PHASE_TUNING), phase_names(cfg, L.PHASE_EVALUATION)
    shared = [n for n in tuning if n in evaluation]
    if shared:
        raise LeakageError(f"corruption {', '.join(shared)} is in both phases (tuning {tuning}, evaluation "
                           f"{evaluation}); two_phase needs disjoint domains: fix benchmark.corruptions.tuning_names "
                           "or benchmark.corruptions.names")


def phase_loop(cfg: Mapping[str, Any], phase: str) -> TestTimeLoop:
    """The online loop of ``phase`` over its corrupted domains (built once, here)."""
    pcfg = phase_config(cfg, phase)
    domains, num_classes = load_domains(pcfg, "evaluation", resolve_device(str(cfg.get("device", "auto"))))
    return TestTimeLoop(pcfg, domains, num_classes)


def check_samples_disjoint(tuning: TestTimeLoop, evaluation: TestTimeLoop) -> None:
    """Refuse images (same pixels) that both phases would score, e.g. a corruption that left an image unchanged."""
    def hashes(loop: TestTimeLoop) -> np.ndarray:
        return np.concatenate([d.sample_hashes() for d in loop.domains.values()])

    shared = int(np.isin(hashes(evaluation), hashes(tuning)).sum())
    if shared:
        raise LeakageError(f"the tuning domains {sorted(tuning.domains)} and the evaluation domains share {shared} "
                           "images (same pixels); two_phase needs disjoint data: choose other tuning corruptions")
