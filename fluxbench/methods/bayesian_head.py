"""Bayesian binary heads on frozen features and their mean-field Gaussian variational inference.

IBCL (Lu, Caprio, Eaton, Lee, arXiv 2305.14782; upstream ``ibcl-anon/ibcl`` @ fe7787b, ``models/models.py`` and
``fgcs_update.py``) fits, per task, Gaussian posteriors over the weights of a small head with Pyro's
``SVI(model, guide, Adam(lr), Trace_ELBO)``. Pyro is not a dependency of fluxbench, so this module does the same
computation in plain torch:

- the guide is mean-field Normal per scalar parameter, ``mu`` initialised at 0 and ``sigma`` at 1 through Pyro's
  ``constraints.positive`` (an ``exp`` of an unconstrained parameter, which is what Adam updates);
- one step draws ONE reparameterised sample ``theta ~ q`` (a single particle) and minimises
  ``-sum_batch log Bernoulli(y | sigmoid(f_theta(x))) + log q(theta) - log p(theta)``; the upstream plate has no
  subsample scale, so every mini-batch carries the whole prior term, as here;
- the total derivative of that surrogate is what Pyro's ``Trace_ELBO`` differentiates for reparameterised sites,
  and torch's Adam is ``pyro.optim.Adam`` (one Adam state per parameter, default betas).

So the posteriors are Pyro's up to the RNG stream and Pyro's clamp of probabilities away from 0 and 1 (here the
Bernoulli likelihood is computed from logits, which is the numerically exact form).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from fluxbench.errors import DivergedError

# spec section 2: hidden widths of the three heads; every head ends in one logit (a Bernoulli likelihood)
HEAD_SIZES = {"small": (), "normal": (64,), "large": (128, 16)}

Params = dict[str, torch.Tensor]


def head_shapes(model_size: str, in_features: int) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a head, named as torch names ``fc1, fc2, ...`` (upstream's names)."""
    widths = (in_features, *HEAD_SIZES[model_size], 1)
    shapes: dict[str, tuple[int, ...]] = {}
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        shapes[f"fc{k}.weight"] = (b, a)
        shapes[f"fc{k}.bias"] = (b,)
    return shapes


def head_logits(params: Params, x: torch.Tensor) -> torch.Tensor:
    """The head's logit for each row of ``x`` (ReLU between layers, as upstream; the sigmoid is the likelihood's)."""
    layers = len(params) // 2
    for k in range(1, layers + 1):
        x = F.linear(x, params[f"fc{k}.weight"], params[f"fc{k}.bias"])
        if k < layers:
            x = torch.relu(x)
    return x.squeeze(1)


@dataclass
class GaussianPosterior:
    """A mean-field Gaussian over every parameter of a head: ``mu`` and ``sigma`` per tensor."""

    mu: Params
    sigma: Params

    @classmethod
    def isotropic(cls, shapes: dict[str, tuple[int, ...]], std: float, device: torch.device | str = "cpu"
                  ) -> GaussianPosterior:
        """The first task's prior N(0, std^2) on every weight and bias."""
        return cls({n: torch.zeros(s, device=device) for n, s in shapes.items()},
                   {n: torch.full(s, float(std), device=device) for n, s in shapes.items()})

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([v.flatten() for v in self.mu.values()]), torch.cat([v.flatten() for v in self.sigma.values()])

    def to_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"mu": {k: v.detach().cpu() for k, v in self.mu.items()},
                "sigma": {k: v.detach().cpu() for k, v in self.sigma.items()}}

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str = "cpu") -> GaussianPosterior:
        return cls({k: v.to(device) for k, v in state["mu"].items()},
                   {k: v.to(device) for k, v in state["sigma"].items()})


def code_distance(a: GaussianPosterior, b: GaussianPosterior) -> float:
    """Upstream's posterior distance for the sub-linear buffer (``fgcs_update.py``):
    ``|mu_a - mu_b|_2 / n + |s_a - s_b|_2 / n_s`` where upstream appends each sigma twice to its flat list, so
    ``n_s = 2 n`` and the sigma norm is ``sqrt(2)`` times larger; reproduced as is (it only rescales ``d``)."""
    mu_a, s_a = a.flat()
    mu_b, s_b = b.flat()
    n = mu_a.numel()
    return float(torch.linalg.norm(mu_a - mu_b) / n + (2 ** 0.5) * torch.linalg.norm(s_a - s_b) / (2 * n))


def _log_normal(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((x - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * torch.log(torch.tensor(2 * torch.pi))).sum()


def elbo_loss(mu: Params, log_sigma: Params, prior: GaussianPosterior, x: torch.Tensor, y: torch.Tensor
              ) -> torch.Tensor:
    """Single-particle negative ELBO of one mini-batch (Trace_ELBO's surrogate for reparameterised sites)."""
    sigma = {n: log_sigma[n].exp() for n in mu}
    theta = {n: mu[n] + sigma[n] * torch.randn_like(mu[n]) for n in mu}
    nll = F.binary_cross_entropy_with_logits(head_logits(theta, x), y.float(), reduction="sum")
    log_q = sum(_log_normal(theta[n], mu[n], sigma[n]) for n in mu)
    log_p = sum(_log_normal(theta[n], prior.mu[n], prior.sigma[n]) for n in mu)
    return nll + log_q - log_p


def fit_gaussian(prior: GaussianPosterior, make_batches: Callable[[], Iterable[Any]], epochs: int, lr: float,
                 loss_of: Callable[[dict, dict, Any], torch.Tensor]) -> tuple[GaussianPosterior, int]:
    """Mean-field Gaussian VI: guide at mu=0, sigma=1, Adam(lr) for ``epochs`` passes over ``make_batches()``,
    minimising ``loss_of(mu, log_sigma, batch)`` (an ELBO against ``prior``). Returns the posterior and the number
    of optimiser steps taken; a non-finite loss is a one-line DivergedError."""
    mu = {n: torch.zeros_like(v, requires_grad=True) for n, v in prior.mu.items()}
    log_sigma = {n: torch.zeros_like(v, requires_grad=True) for n, v in prior.mu.items()}  # sigma = exp(0) = 1
    opt = torch.optim.Adam([*mu.values(), *log_sigma.values()], lr=lr)
    steps = 0
    for _ in range(epochs):
        for batch in make_batches():
            loss = loss_of(mu, log_sigma, batch)
            if not torch.isfinite(loss):
                raise DivergedError(f"the ELBO became {loss.item()}; lower method.lr or check the features")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    with torch.no_grad():
        return GaussianPosterior({n: v.detach().clone() for n, v in mu.items()},
                                 {n: v.detach().exp() for n, v in log_sigma.items()}), steps


def fit_posterior(prior: GaussianPosterior, make_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                  epochs: int, lr: float) -> tuple[GaussianPosterior, int]:
    """Variational posterior of one IBCL chain. ``make_batches()`` gives one epoch of ``(features, 0/1 labels)``
    batches (shuffled by torch's global RNG, which the protocol seeds)."""
    return fit_gaussian(prior, make_batches, epochs, lr, lambda mu, log_sigma, b: elbo_loss(mu, log_sigma, prior, *b))
