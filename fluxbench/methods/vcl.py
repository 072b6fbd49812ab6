"""Preference-weighted VCL (+ replay): IBCL's Bayesian baseline, one variational posterior trained per preference.

Upstream ``ibcl-anon/ibcl`` ``baseline_vcl.py`` (Nguyen et al.'s VCL with an episodic memory): a mean-field
Gaussian head whose prior is the posterior of the previous task (task 0: N(0, prior_std^2)), fitted by SVI on
``sum_l w_l * ELBO_l`` over the current task and the first 200 training examples of each past task; a preference's
models are ``num_models_per_pref`` samples of its posterior. Spec ``specs/ibcl.md`` section 5; the harness's
conventions are in :mod:`.preference_training`. The VI is :mod:`.bayesian_head`'s (guide at mu=0, sigma=1, one
particle, Adam); the weighted ELBO keeps one prior term, since the weights sum to 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.distributions import Normal
from torch.nn import functional as F

from fluxbench.methods.base import check_choice, check_range
from fluxbench.methods.bayesian_head import HEAD_SIZES, GaussianPosterior, Params, fit_gaussian, head_logits
from fluxbench.methods.preference_training import PreferenceTrained, WeightedBatch
from fluxbench.methods.registry import register_method


@dataclass
class VCLHparams:
    model_size: str
    prior_std: float
    lr: float
    epochs: int
    batch_size: int
    memory_per_task: int
    num_models_per_pref: int

    def __post_init__(self) -> None:
        check_choice("model_size", self.model_size, HEAD_SIZES)
        check_range("prior_std", self.prior_std, 0, low_open=True)
        check_range("lr", self.lr, 0, 10, low_open=True)
        check_range("epochs", self.epochs, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("memory_per_task", self.memory_per_task, 1)
        check_range("num_models_per_pref", self.num_models_per_pref, 1)


def weighted_elbo_loss(mu: Params, log_sigma: Params, prior: GaussianPosterior, terms: WeightedBatch
                       ) -> torch.Tensor:
    """``sum_l w_l * NLL_l(theta) + log q(theta) - log p(theta)`` for one reparameterised sample ``theta ~ q``."""
    sigma = {n: log_sigma[n].exp() for n in mu}
    theta = {n: mu[n] + sigma[n] * torch.randn_like(mu[n]) for n in mu}
    nll = sum(w * F.binary_cross_entropy_with_logits(head_logits(theta, x), y.float(), reduction="sum")
              for x, y, w in terms)
    log_q = sum(Normal(mu[n], sigma[n]).log_prob(theta[n]).sum() for n in mu)
    log_p = sum(Normal(prior.mu[n], prior.sigma[n]).log_prob(theta[n]).sum() for n in mu)
    return nll + log_q - log_p


@register_method("vcl")
class VCL(PreferenceTrained):
    """The previous task's posterior is every preference run's prior; its samples are the preference's models."""

    Hparams = VCLHparams

    def fit(self, start: GaussianPosterior | None, make_batches: Callable[[], Iterator[WeightedBatch]]
            ) -> tuple[GaussianPosterior, int]:
        prior = start or GaussianPosterior.isotropic(self.shapes, self.hparams.prior_std, self.device)
        return fit_gaussian(prior, make_batches, self.hparams.epochs, self.hparams.lr,
                            lambda mu, log_sigma, terms: weighted_elbo_loss(mu, log_sigma, prior, terms))

    @torch.no_grad()
    def models(self, state: GaussianPosterior, num_models: int | None) -> list[Params]:
        return [{n: state.mu[n] + state.sigma[n] * torch.randn_like(state.mu[n]) for n in state.mu}
                for _ in range(num_models or self.hparams.num_models_per_pref)]

    def continual_model(self) -> Params:
        return self.state_now.mu

    def to_state(self, state: GaussianPosterior | None) -> dict | None:
        return None if state is None else state.to_state()

    def from_state(self, state: dict | None) -> GaussianPosterior | None:
        return None if state is None else GaussianPosterior.from_state(state, self.device)
