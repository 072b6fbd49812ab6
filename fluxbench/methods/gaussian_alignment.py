"""Per-class feature Gaussians and classifier alignment on features sampled from them.

Provenance: the classifier-alignment stage of SLCA (Zhang et al., ICCV 2023) as MOS uses it
(github.com/sun-hailong/AAAI25-MOS @ 8d5e07c, ``models/mos.py``: ``_compute_mean`` and
``classifer_align``). Each class keeps the mean and covariance (+1e-4 I) of its training features,
or only their diagonal ("variance"); no exemplars are stored. Alignment retrains the linear head
alone on ``5 * batch_size`` samples per seen class per epoch, shuffled and split into one mini-batch
per seen class, with SGD (momentum 0.9) and a cosine schedule over the epochs.
What differs: the Cholesky factor of each class is computed once per alignment call instead of once
per class per epoch (same distribution); upstream's "multi-centroid" storage is not offered.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

STORAGES = ("covariance", "variance")
COV_JITTER = 1e-4  # added to the diagonal, as upstream


class ClassGaussians:
    """Mean and (full or diagonal) covariance of each class's features, keyed by stream label."""

    def __init__(self, storage: str = "covariance") -> None:
        self.storage = storage
        self.means: dict[int, torch.Tensor] = {}
        self.covs: dict[int, torch.Tensor] = {}
        self._factors: dict[int, torch.Tensor] = {}  # Cholesky factors, cached inside a ``with`` block

    def fit(self, c: int, feats: torch.Tensor) -> None:
        """Store class ``c``'s statistics from its features (one row per training image)."""
        f = feats.float()
        cov = torch.cov(f.T) if len(f) > 1 else torch.zeros(f.shape[1], f.shape[1], device=f.device)
        cov = cov + COV_JITTER * torch.eye(f.shape[1], device=f.device)
        self.means[int(c)] = f.mean(0)
        self.covs[int(c)] = cov if self.storage == "covariance" else cov.diagonal().clone()

    def stacked_means(self, classes: range | list[int]) -> torch.Tensor:
        return torch.stack([self.means[int(c)] for c in classes])

    def sample(self, classes: range | list[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws per class from torch's global generator (the protocol seeds it)."""
        xs, ys = [], []
        for c in classes:
            mean = self.means[int(c)]
            eps = torch.randn(n, mean.numel(), device=mean.device)
            xs.append(mean + eps @ self._factor(int(c)).T)
            ys.append(torch.full((n,), int(c), dtype=torch.long, device=mean.device))
        return torch.cat(xs), torch.cat(ys)

    def _factor(self, c: int) -> torch.Tensor:
        cov = self.covs[c]
        if cov.dim() == 1:
            return torch.diag(cov.sqrt())
        factor = self._factors.get(c)
        if factor is None:
            factor = self._factors[c] = torch.linalg.cholesky(cov.double()).float()
        return factor

    def __enter__(self) -> ClassGaussians:
        self._factors = {}
        return self

    def __exit__(self, *exc: Any) -> None:
        self._factors = {}

    def state(self) -> dict[str, Any]:
        return {"storage": self.storage, "means": dict(self.means), "covs": dict(self.covs)}

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        self.storage = state["storage"]
        self.means = {int(c): t.to(device) for c, t in state["means"].items()}
        self.covs = {int(c): t.to(device) for c, t in state["covs"].items()}


def align_classifier(
    head: nn.Linear, gaussians: ClassGaussians, num_seen: int, batch_size: int, epochs: int, lr: float,
    weight_decay: float,
) -> float:
    """Retrain ``head`` on Gaussian samples of classes ``0..num_seen-1``; returns the last epoch's accuracy."""
    per_class = 5 * batch_size
    params = list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    correct = total = 0
    with gaussians, torch.enable_grad():
        for _ in range(epochs):
            x, y = gaussians.sample(range(num_seen), per_class)
            order = torch.randperm(len(y), device=y.device)
            x, y = x[order], y[order]
            correct = total = 0
            for start in range(0, len(y), per_class):
                logits = head(x[start:start + per_class])[:, :num_seen]
                target = y[start:start + per_class]
                loss = F.cross_entropy(logits, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                correct += int((logits.argmax(1) == target).sum())
                total += len(target)
            sched.step()
    return correct / max(total, 1)
