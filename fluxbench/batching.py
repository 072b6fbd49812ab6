"""Mini-batches from preloaded tensors: what the streams, the methods and the embedded models' pretraining share.

A leaf module (torch only), so that backbones and benchmarks can use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [0, 1]; float input passes through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches by indexing preloaded tensors: no per-sample Python work in the loop.

    uint8 images are converted to floats in [0, 1] per batch, after indexing.
    """
    n = len(y)
    order = torch.randperm(n, device=x.device) if shuffle else torch.arange(n, device=x.device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        xb = to_float(x[index])
        yield (transform(xb) if transform else xb), y[index]
