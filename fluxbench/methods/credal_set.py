"""IBCL's knowledge base: a finitely generated credal set (FGCS) of Gaussian posteriors, and zero-shot models.

Lu, Caprio, Eaton, Lee, "IBCL: Zero-shot Model Generation for Task Trade-offs in Continual Learning"
(arXiv 2305.14782); upstream ``ibcl-anon/ibcl`` @ fe7787b: ``fgcs_update.py`` (Algorithm 1, the sub-linear
buffer) and ``zero_shot_model_locate.py`` (Algorithm 2). Spec: ``specs/ibcl.md`` sections 3 and 4.

- Each task contributes ``m`` extreme points; a new posterior within distance ``d`` of a buffered one is not
  stored, and the *reuse map* points its slot at that buffered posterior (which is also the chain's next prior).
- A preference ``w`` over the ``k`` tasks seen builds a model without training: every extreme point of task ``i``
  gets weight ``w_i / m`` and the Gaussians' *parameters* are combined linearly (upstream's moment-style
  interpolation, not a mixture density), then a per-parameter interval (the HDR) is sampled uniformly.
- ``hdr_mode="code"``: upstream's interval between quantiles ``(1 - alpha)/2`` and ``(1 + alpha)/2``, which holds
  ``alpha`` of the mass (about 0.025 sigma wide at alpha = 0.01: the models are near the mean);
  ``hdr_mode="paper"``: the paper's (1 - alpha) highest-density region, quantiles ``alpha/2`` and ``1 - alpha/2``.
- ``sampling="per_tensor"``: upstream's one uniform draw per parameter tensor (all its entries share their relative
  position in the interval); ``"per_element"``: one draw per scalar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fluxbench.errors import ConfigError
from fluxbench.methods.bayesian_head import GaussianPosterior, Params, code_distance

HDR_MODES = ("code", "paper")
SAMPLINGS = ("per_tensor", "per_element")
SIMPLEX_TOLERANCE = 1e-3  # upstream asserts |sum(w) - 1| <= 1e-3


def check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1 or math.isnan(alpha):
        raise ConfigError(f"alpha must be in (0, 1); got {alpha!r}")


def check_preference(pref: Sequence[float], num_tasks: int) -> list[float]:
    """``pref`` as floats, or a one-line ConfigError: it must have one weight per task seen and lie on the simplex."""
    try:
        values = [float(v) for v in pref]
    except (TypeError, ValueError):
        raise ConfigError(f"a preference must be a list of {num_tasks} numbers; got {pref!r}") from None
    if len(values) != num_tasks:
        raise ConfigError(f"a preference needs one weight per task seen ({num_tasks}); got {len(values)}: {values}")
    if any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > SIMPLEX_TOLERANCE:
        raise ConfigError(f"a preference must be on the simplex (weights >= 0 summing to 1); got {values}")
    return values


def hdr_quantiles(alpha: float, mode: str) -> tuple[float, float]:
    """The lower and upper standard-normal quantile levels of the interval (see the module docstring)."""
    check_alpha(alpha)
    if mode == "code":
        return (1 - alpha) / 2, (1 + alpha) / 2
    if mode == "paper":
        return alpha / 2, 1 - alpha / 2
    raise ConfigError(f"hdr_mode must be one of {list(HDR_MODES)}; got {mode!r}")


@dataclass
class CredalSet:
    """The buffered posteriors, which buffer entry serves each task's extreme point, and the buffer's growth."""

    buffer: list[GaussianPosterior] = field(default_factory=list)
    names: list[tuple[int, int]] = field(default_factory=list)  # (task, extreme point) of each buffer entry
    slots: list[list[int]] = field(default_factory=list)  # slots[i][j]: the buffer entry of extreme point j of task i
    reuse: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)  # discarded -> reused posterior
    growth: list[int] = field(default_factory=list)  # buffer size after each task

    @property
    def num_tasks(self) -> int:
        return len(self.slots)

    def add_task(self, posteriors: list[GaussianPosterior], threshold: float) -> list[GaussianPosterior]:
        """Buffer task ``i``'s posteriors (Algorithm 1, step 4); returns each chain's next prior."""
        task = self.num_tasks
        slots = []
        for j, post in enumerate(posteriors):
            # compared with everything buffered so far, this task's earlier extreme points included (as upstream)
            dists = [code_distance(post, old) for old in self.buffer]
            if dists and min(dists) <= threshold:
                k = dists.index(min(dists))
                self.reuse[(task, j)] = self.names[k]
                slots.append(k)
            else:
                self.buffer.append(post)
                self.names.append((task, j))
                slots.append(len(self.buffer) - 1)
        self.slots.append(slots)
        self.growth.append(len(self.buffer))
        return [self.buffer[k] for k in slots]

    def combine(self, pref: Sequence[float]) -> GaussianPosterior:
        """The preference-weighted combination of the extreme points' parameters (Algorithm 2, step 1)."""
        w = check_preference(pref, self.num_tasks)
        mu: Params = {}
        sigma: Params = {}
        for i, slots in enumerate(self.slots):
            for k in slots:
                post, weight = self.buffer[k], w[i] / len(slots)
                for n in post.mu:
                    mu[n] = mu.get(n, 0) + weight * post.mu[n]
                    sigma[n] = sigma.get(n, 0) + weight * post.sigma[n]
        return GaussianPosterior(mu, sigma)

    def state(self) -> dict[str, Any]:
        """Tensors, lists and numbers only: checkpoints load with ``weights_only=True``."""
        return {"buffer": [p.to_state() for p in self.buffer], "names": [list(n) for n in self.names],
                "slots": [list(s) for s in self.slots], "reuse": [[*k, *v] for k, v in self.reuse.items()],
                "growth": list(self.growth)}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> CredalSet:
        return cls([GaussianPosterior.from_state(p, device) for p in state["buffer"]],
                   [tuple(n) for n in state["names"]], [list(s) for s in state["slots"]],
                   {(a, b): (c, d) for a, b, c, d in state["reuse"]}, list(state["growth"]))


def hdr(post: GaussianPosterior, alpha: float, mode: str) -> tuple[Params, Params]:
    """Per-parameter lower and upper bounds of the HDR of ``post`` (Algorithm 2, step 2)."""
    lo_q, hi_q = hdr_quantiles(alpha, mode)
    normal = torch.distributions.Normal(0.0, 1.0)
    z_lo, z_hi = float(normal.icdf(torch.tensor(lo_q))), float(normal.icdf(torch.tensor(hi_q)))
    lower = {n: post.mu[n] + z_lo * post.sigma[n] for n in post.mu}
    upper = {n: post.mu[n] + z_hi * post.sigma[n] for n in post.mu}
    return lower, upper


def sample_models(lower: Params, upper: Params, num_models: int, sampling: str = "per_tensor",
                  generator: torch.Generator | None = None) -> list[Params]:
    """``num_models`` deterministic heads drawn uniformly from the HDR (Algorithm 2, step 3)."""
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling must be one of {list(SAMPLINGS)}; got {sampling!r}")
    models = []
    for _ in range(num_models):
        model = {}
        for n, lo in lower.items():
            shape = (1,) * lo.dim() if sampling == "per_tensor" else lo.shape
            u = torch.rand(shape, generator=generator, device=lo.device if generator is None else generator.device)
            model[n] = lo + u.to(lo.device) * (upper[n] - lo)
        models.append(model)
    return models
