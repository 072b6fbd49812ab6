"""The data mixture of each step (spec ``fomo_in_flux.md`` section 4).

A step's batch of ``B`` samples comes from three pools by ``data_mixture`` (pretraining, update, buffer).
Sub-batch sizes are ``int(B * ratio)``, the remainder added one at a time to the pools in that order
(so 0.33/0.34/0.33 at B=32 gives 11/11/10, at B=512 169/175/168). A pool with nothing to give (the
buffer on task 1, a missing pretraining pool) has its share redistributed to the others in proportion
to their ratios before the arithmetic, and never receives a remainder sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from fluxbench.errors import ConfigError

POOLS = ("pretraining", "update", "buffer")
DEFAULT_MIXTURE = {"pretraining": 0.33, "update": 0.34, "buffer": 0.33}
# the spec's recipe (section 9, step 4) when no pretraining pool is available; the run records the deviation
NO_PRETRAINING_MIXTURE = {"pretraining": 0.0, "update": 0.5, "buffer": 0.5}


def check_mixture(ratios: Mapping[str, float] | None) -> dict[str, float]:
    """The mixture as ``{pool: ratio}``: non-negative numbers over exactly the three pools, summing to 1."""
    ratios = dict(DEFAULT_MIXTURE if ratios is None else ratios)
    unknown = sorted(set(ratios) - set(POOLS))
    if unknown:
        raise ConfigError(f"protocol.data_mixture has unknown pools {unknown}; use {', '.join(POOLS)}")
    out = {}
    for pool in POOLS:
        value = ratios.get(pool, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise ConfigError(f"protocol.data_mixture.{pool} must be a number >= 0; got {value!r}")
        out[pool] = float(value)
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"protocol.data_mixture must sum to 1; got {' + '.join(f'{out[p]:g}' for p in POOLS)} "
                          f"= {total:g}")
    if out["update"] == 0:
        raise ConfigError("protocol.data_mixture.update must be > 0: the update pool is what a task adds")
    return out


def effective_ratios(ratios: Mapping[str, float], available: Iterable[str]) -> dict[str, float]:
    """``ratios`` with the shares of unavailable pools redistributed to the available ones, proportionally."""
    available = set(available)
    kept = {p: (ratios[p] if p in available else 0.0) for p in POOLS}
    total = sum(kept.values())
    if total <= 0:
        raise ConfigError(f"no pool with a positive share has data (available: {sorted(available)})")
    return {p: v / total for p, v in kept.items()}


def sub_batch_sizes(batch_size: int, ratios: Mapping[str, float], available: Iterable[str] = POOLS) -> dict[str, int]:
    """Samples per pool in one step of ``batch_size``: floors, then the remainder one at a time in pool order."""
    if batch_size < 1:
        raise ConfigError(f"protocol.batch_size must be >= 1; got {batch_size}")
    shares = effective_ratios(ratios, available)
    sizes = {p: int(batch_size * shares[p]) for p in POOLS}
    receivers = [p for p in POOLS if shares[p] > 0]
    left = batch_size - sum(sizes.values())
    for k in range(left):
        sizes[receivers[k % len(receivers)]] += 1
    return sizes
