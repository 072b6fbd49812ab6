"""The conventional protocol: train and report on one scenario (the evaluation data).

It runs the configured hyperparameters over ``protocol.num_seeds`` seeds and reports mean,
std and a 95% confidence interval. When hyperparameters are tuned on the same scenario
(as most papers do), this number is optimistic; ``two_phase`` measures by how much.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fluxbench.protocols.execution import SupervisedLoop, data_split_tags
from fluxbench.protocols.parent import ProtocolCall, run_protocol, run_seeds, seeds_result
from fluxbench.protocols.preflight import preflight
from fluxbench.protocols.setup import load_split
from fluxbench.protocols.summary import format_table
from fluxbench.tracking import Tracker, config_hash
from fluxbench.tracking.layout import FINGERPRINT_TAG


def run(cfg: Mapping[str, Any], tracker: Tracker) -> dict[str, Any]:
    preflight(cfg, kind="supervised")
    split = load_split(cfg, "evaluation")
    loop = SupervisedLoop(cfg, split)
    label = f"{cfg['method']['name']} on {cfg['benchmark']['name']}"
    call = ProtocolCall("conventional", label, config_hash(cfg, split.fingerprint()),
                        {FINGERPRINT_TAG.format(role="evaluation"): split.fingerprint(),
                         **data_split_tags(split, "evaluation")})
    return run_protocol(cfg, tracker, call, lambda parent: seeds_result(
        run_seeds(cfg, loop, tracker, parent, label), lambda agg: format_table({label: agg})))
