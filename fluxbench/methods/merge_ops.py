"""Model-merge operators over state dicts (spec ``fomo_in_flux.md`` section 6, the release's ``merge.py``).

Each operator takes the models to merge (``models``, newest first) and the zero-shot weights, and returns the
merged tensors; only the keys of ``zero_shot`` are merged (parameters: a float buffer such as the causal mask's
``-inf`` has no task vector). Provenance: FoMo-in-Flux ``continual_lib/merge.py`` (v1.0):

- ``interpolation``: ``sum_i w_i * theta_i``, weights summing to 1;
- ``task_arithmetic`` (Ilharco et al. 2023): ``theta_0 + scaling * sum_i tau_i`` with ``tau_i = theta_i - theta_0``;
- ``ties`` (Yadav et al. 2023): per task vector, flattened over the whole model, keep the entries whose magnitude
  is at least the ``k``-th smallest, ``k = int(n * prune)`` (release default prune 0.7: ~70% trimmed); elect
  each entry's sign as the sign of the trimmed vectors' sum (a tie goes to the sign of the total); average the
  entries that agree with it (disjoint mean); ``theta_0 + scaling * merged``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fluxbench.errors import ConfigError

StateDict = Mapping[str, torch.Tensor]
MERGE_OPS = ("interpolation", "task_arithmetic", "ties")


def interpolation(models: Sequence[StateDict], weights: Sequence[float],
                  keys: Sequence[str]) -> dict[str, torch.Tensor]:
    return {k: sum(w * m[k] for w, m in zip(weights, models)) for k in keys}


def _flat(model: StateDict, keys: Sequence[str]) -> torch.Tensor:
    return torch.cat([model[k].reshape(-1).float() for k in keys])


def _unflat(vector: torch.Tensor, like: StateDict, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    out, at = {}, 0
    for k in keys:
        n = like[k].numel()
        out[k] = vector[at:at + n].reshape(like[k].shape).to(like[k].dtype)
        at += n
    return out


def task_vectors(models: Sequence[StateDict], zero_shot: StateDict, keys: Sequence[str]) -> torch.Tensor:
    """One row per model: its flattened difference to the zero-shot weights."""
    base = _flat(zero_shot, keys)
    return torch.stack([_flat(m, keys) - base for m in models])


def task_arithmetic(models: Sequence[StateDict], zero_shot: StateDict, keys: Sequence[str],
                    scaling: float = 1.0) -> dict[str, torch.Tensor]:
    merged = _flat(zero_shot, keys) + scaling * task_vectors(models, zero_shot, keys).sum(0)
    return _unflat(merged, zero_shot, keys)


def ties_vector(tau: torch.Tensor, prune: float) -> torch.Tensor:
    """TIES on stacked task vectors ``tau`` (models x entries): trim, elect sign, disjoint mean."""
    k = int(tau.shape[1] * prune)
    if k >= 1:  # k = 0: nothing trimmed (kthvalue counts from 1)
        kth = tau.abs().kthvalue(k, dim=1, keepdim=True).values
        tau = tau * (tau.abs() >= kth)
    sign = torch.sign(tau.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    agree = torch.where(sign > 0, tau > 0, tau < 0)
    kept = tau * agree
    return kept.sum(0) / agree.sum(0).clamp(min=1)


def ties(models: Sequence[StateDict], zero_shot: StateDict, keys: Sequence[str], prune: float = 0.7,
         scaling: float = 1.0) -> dict[str, torch.Tensor]:
    merged = _flat(zero_shot, keys) + scaling * ties_vector(task_vectors(models, zero_shot, keys), prune)
    return _unflat(merged, zero_shot, keys)


def merge(op: str, models: Sequence[StateDict], zero_shot: StateDict, keys: Sequence[str], *, weight: float,
          prune: float, scaling: float) -> dict[str, torch.Tensor]:
    """The two-model merge of the merge methods: ``models = (new, other)``; ``weight`` is the new model's share
    in an interpolation."""
    if op == "interpolation":
        return interpolation(models, [weight, 1 - weight], keys)
    if op == "task_arithmetic":
        return task_arithmetic(models, zero_shot, keys, scaling)
    if op == "ties":
        return ties(models, zero_shot, keys, prune, scaling)
    raise ConfigError(f"method.merge_op must be one of {', '.join(MERGE_OPS)}; got {op!r}")
