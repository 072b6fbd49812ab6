"""Image-text pools and the draws of one step from them (spec ``fomo_in_flux.md`` section 4).

- **update**: the current task's training images with their captions; drawn through successive seeded
  permutations, so it wraps around when a task has more steps than one pass holds;
- **buffer**: the union of every *earlier* task's update pool (unbounded, as in the release); empty on task 1;
- **pretraining**: image-text pairs of the backbone's own pretraining data (the embedded default: the digits
  pretraining pool the tiny CLIP was trained on, with its templated captions), drawn like the update pool.

Every draw comes from a generator seeded by (seed, task), so a task's batches do not depend on what ran
before it in this process: a resumed seed draws exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fluxbench.protocols.cpt.mixture import POOLS


@dataclass
class ImageTextPool:
    """``images`` (N, H, W, 3) uint8, ``tokens`` (N, context) int64, ``labels`` (N,) class ids (stream order;
    -1 where a pool has none), ``tasks`` (N,) the task each sample came from (-1: the pretraining pool)."""

    images: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor
    tasks: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> ImageTextPool:
        return ImageTextPool(self.images[index], self.tokens[index], self.labels[index], self.tasks[index])

    @staticmethod
    def concat(pools: list[ImageTextPool]) -> ImageTextPool:
        return ImageTextPool(*(torch.cat([getattr(p, f) for p in pools]) for f in ("images", "tokens", "labels",
                                                                                  "tasks")))


def pool_of(images: np.ndarray, tokens: torch.Tensor, labels: np.ndarray, task: int) -> ImageTextPool:
    n = len(images)
    return ImageTextPool(torch.from_numpy(np.ascontiguousarray(images)), tokens.long(),
                         torch.as_tensor(np.asarray(labels), dtype=torch.long), torch.full((n,), task))


class Cycler:
    """Indices ``0..n-1`` in successive random permutations (a loader extended to any length, wrapping around)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.gen = n, generator
        self.order = torch.empty(0, dtype=torch.long)

    def next(self, k: int) -> torch.Tensor:
        while len(self.order) < k:
            self.order = torch.cat([self.order, torch.randperm(self.n, generator=self.gen)])
        out, self.order = self.order[:k], self.order[k:]
        return out


class MixedBatches:
    """The mixed batches of one task: ``sizes[pool]`` samples from each pool per step."""

    def __init__(self, pools: dict[str, ImageTextPool | None], sizes: dict[str, int], seed: int, task: int) -> None:
        self.gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(task))
        self.pools = {p: pools[p] for p in POOLS if sizes[p] > 0}
        self.sizes = sizes
        # update and pretraining wrap around in permutations; the buffer is sampled uniformly from all earlier data
        self.cyclers = {p: Cycler(len(pool), self.gen) for p, pool in self.pools.items() if p != "buffer"}

    def next(self) -> dict[str, ImageTextPool]:
        out = {}
        for pool, data in self.pools.items():
            k = self.sizes[pool]
            index = (torch.randint(len(data), (k,), generator=self.gen) if pool == "buffer"
                     else self.cyclers[pool].next(k))
            out[pool] = data.take(index)
        return out


def images_to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] on ``device`` (the backbone normalises and resizes)."""
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
