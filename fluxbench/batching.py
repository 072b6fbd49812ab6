"""Mini-batches from preloaded tensors: what the streams, the methods and the embedded models' pretraining share.

A leaf module (torch only), so that backbones and benchmarks can use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [0, 1]; float input passes through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device``; to a GPU through pinned memory without blocking the host (copies overlap compute)."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = False,
    transform: Callable[..., torch.Tensor] | None = None,
    sizes: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches by indexing preloaded tensors: no per-sample Python work in the loop.

    ``transform`` runs on the indexed batch as stored (uint8 stays uint8: crops and flips move 4x fewer bytes),
    then uint8 images become floats in [0, 1]. With ``sizes`` (``(N, 2)`` original image sizes, on the CPU,
    for a crop source) the transform crops rows of ``x`` itself: ``transform(x, sizes=sizes[rows], rows=rows)``.
    """
    n = len(y)
    order = torch.randperm(n, device=x.device) if shuffle else torch.arange(n, device=x.device)
    rows = order.cpu() if sizes is not None else None  # one host copy per epoch, not per batch
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        if rows is not None:  # the transform cuts its crops out of x: no gathered copy of the whole images
            xb = transform(x, sizes=sizes[rows[start:start + batch_size]], rows=index)
        else:
            xb = transform(x[index]) if transform is not None else x[index]
        yield to_float(xb), y[index]
