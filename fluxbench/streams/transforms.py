"""Training augmentations that work on whole batches of tensors, on the CPU or the GPU.

Images come out of the decode-once cache as tensors, so augmentation is a few tensor
ops per batch instead of PIL work per sample. The ops follow torchvision's definitions:

- ``pad_crop``: ``RandomCrop(size, padding)`` of the CIFAR recipes (zero padding, random offset);
- ``random_resized_crop``: ``RandomResizedCrop(size, scale, ratio)`` (ten tries per sample to
  draw an area and aspect ratio that fit, else the central crop);
- ``horizontal_flip``: ``RandomHorizontalFlip(p)``.

Random numbers come from torch's global CPU generator (the protocol seeds it) and are
moved to the batch's device, so a seed gives the same crop boxes and flips on CPU and GPU.

Folder data sets give training batches from their crop source (the whole image at a fixed
square, :class:`fluxbench.benchmarks.base.CropSource`) with each image's original size:
boxes are then sampled on the original geometry, as torchvision's transform on the file,
and mapped onto the cached square (rounded to its pixels on the CPU path). Resampling:
uint8 batches on the CPU are cut out and resized one image at a time by ``F.interpolate``
(bilinear, antialiased: torchvision v2's ``resized_crop`` on uint8, its fast channels-last
kernel); float batches and other devices go through one ``grid_sample`` for the whole
batch (bilinear, no antialiasing: crops that are enlarged, the default for a centre view,
equal cutting out the crop and ``F.interpolate``; shrunk crops alias slightly).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fluxbench.errors import ConfigError
from fluxbench.streams.experience import BatchTransform


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"batch transforms take (N, C, H, W) tensors, got shape {tuple(x.shape)}")


def _flips(n: int, p: float) -> torch.Tensor:
    """Which of ``n`` images to mirror, drawn from the global CPU generator."""
    return torch.rand(n) < p


@dataclass(frozen=True)
class PadCrop:
    """Zero-pad by ``padding`` on every side, then crop the original size at a random offset per image.

    ``flip`` mirrors each output with that probability in the same gather (no extra pass).
    """

    padding: int = 4
    flip: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        n, _, h, w = x.shape
        offsets = torch.randint(0, 2 * self.padding + 1, (2, n))
        cols = torch.arange(w).expand(n, w)
        if self.flip > 0:
            cols = torch.where(_flips(n, self.flip)[:, None], cols.flip(1), cols)
        offsets, cols = offsets.to(x.device), cols.to(x.device)
        padded = F.pad(x, [self.padding] * 4) if self.padding else x
        rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (n, h)
        cols = offsets[1, :, None] + cols  # (n, w)
        batch = torch.arange(n, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
        return out.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class HorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    p: float = 0.5

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        flip = _flips(len(x), self.p).to(x.device)
        out = x.clone()
        out[flip] = x[flip].flip(3)
        return out


@dataclass(frozen=True)
class RandomResizedCrop:
    """A random area (``scale`` of the image) and aspect ratio (``ratio``) per image, resized to ``size``.

    ``size`` (square) defaults to the input height.

    ``flip`` mirrors each output with that probability inside the same resampling (no extra pass).
    """

    size: int | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.0
    attempts: int = 10

    takes_geometry: ClassVar[bool] = True  # may crop a batch of whole images given their original sizes

    def boxes(self, n: int, h: int | torch.Tensor, w: int | torch.Tensor) -> torch.Tensor:
        """``(n, 4)`` crop boxes ``(top, left, height, width)`` by torchvision's sampling rule, on an ``h`` x ``w``
        image (ints, or ``(n,)`` tensors: one geometry per image)."""
        h = torch.as_tensor(h, dtype=torch.float32).reshape(-1, 1).expand(n, 1)
        w = torch.as_tensor(w, dtype=torch.float32).reshape(-1, 1).expand(n, 1)
        area = torch.empty(n, self.attempts).uniform_(*self.scale) * (h * w)
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(torch.empty(n, self.attempts).uniform_(*log_ratio))
        cw = torch.round(torch.sqrt(area * aspect))
        ch = torch.round(torch.sqrt(area / aspect))
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = fits.to(torch.int8).argmax(dim=1)
        pick = torch.arange(n)
        cw, ch, found = cw[pick, first], ch[pick, first], fits.any(dim=1)
        h, w = h[:, 0], w[:, 0]
        fw, fh = self._fallback(h, w)
        cw, ch = torch.where(found, cw, fw), torch.where(found, ch, fh)
        u = torch.rand(2, n)
        top = torch.where(found, torch.floor(u[0] * (h - ch + 1)), torch.div(h - ch, 2, rounding_mode="floor"))
        left = torch.where(found, torch.floor(u[1] * (w - cw + 1)), torch.div(w - cw, 2, rounding_mode="floor"))
        return torch.stack([top, left, ch, cw], dim=1)

    def _fallback(self, h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The central crop torchvision uses when no draw fits: the largest box within ``ratio``."""
        in_ratio = w / h
        narrow, wide = in_ratio < self.ratio[0], in_ratio > self.ratio[1]
        fw = torch.where(wide, torch.round(h * self.ratio[1]), w)
        fh = torch.where(narrow, torch.round(w / self.ratio[0]), h)
        return fw, fh

    def __call__(
        self, x: torch.Tensor, sizes: torch.Tensor | None = None, size: int | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Crops of ``x`` (of ``x[rows]`` when given: the batch is not gathered first). With ``sizes`` (``(n, 2)``
        original heights and widths, on the CPU) ``x`` holds whole images resized to a square and boxes follow
        each original geometry. Output side: ``self.size``, else ``size``, else the input height."""
        _check_batch(x)
        _, _, h, w = x.shape
        n = len(x) if rows is None else len(rows)
        size = self.size or size or h
        geometry = sizes.to(torch.float32).unbind(1) if sizes is not None else (float(h), float(w))
        boxes = self.boxes(n, *geometry)
        flips = _flips(n, self.flip) if self.flip > 0 else torch.zeros(n, dtype=torch.bool)
        # the box as fractions of the image: the same on the original and on the cached square
        tall, wide = (torch.full((n,), float(h)), torch.full((n,), float(w))) if sizes is None else geometry
        frac = torch.stack([boxes[:, 0] / tall, boxes[:, 1] / wide, boxes[:, 2] / tall, boxes[:, 3] / wide], dim=1)
        if x.dtype == torch.uint8 and x.device.type == "cpu":
            return _resize_each(x, frac, flips, size, range(n) if rows is None else rows.tolist())
        return _grid_resize(x if rows is None else x[rows], frac, flips, size)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Intra-op threads off for a loop of small ops: handing each one to the thread pool costs more than the
    work (10x the CPU time on a busy 2-core machine). Restored after; the step's large ops keep every thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _resize_each(
    x: torch.Tensor, frac: torch.Tensor, flips: torch.Tensor, size: int, rows: Sequence[int]
) -> torch.Tensor:
    """Cut out each box of ``x[rows[i]]`` (rounded to ``x``'s pixels, at least one) and resize it, antialiased,
    one image at a time."""
    _, c, h, w = x.shape
    top = (frac[:, 0] * h).round().clamp(0, h - 1)
    left = (frac[:, 1] * w).round().clamp(0, w - 1)
    bottom = torch.maximum(((frac[:, 0] + frac[:, 2]) * h).round().clamp(max=h), top + 1)
    right = torch.maximum(((frac[:, 1] + frac[:, 3]) * w).round().clamp(max=w), left + 1)
    # channels-last out, as the kernel's result and the cached batches are: each image is then one plain copy
    out = torch.empty((len(frac), size, size, c), dtype=x.dtype).permute(0, 3, 1, 2)
    boxes = torch.stack([top, left, bottom, right], 1).long().tolist()
    flipped = flips.tolist()

    def resize(images: range) -> None:
        for i in images:
            t, le, b, r = boxes[i]
            # channels-last is the layout of torch's fast uint8 kernel (a cached NHWC batch already is)
            crop = x[rows[i]:rows[i] + 1, :, t:b, le:r].contiguous(memory_format=torch.channels_last)
            resized = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out[i] = resized[0].flip(2) if flipped[i] else resized[0]

    workers = min(torch.get_num_threads(), len(boxes))
    with _one_thread():
        # one Python thread per torch thread: each kernel runs on its caller with the GIL released (1.4x on 2
        # cores); every image is its own work, so the output is the same for any number of threads
        if workers > 1:
            list(_resize_pool(workers).map(resize, [range(k, len(boxes), workers) for k in range(workers)]))
        else:
            resize(range(len(boxes)))
    return out


@functools.cache
def _resize_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="fluxbench-crop")


def _grid_resize(x: torch.Tensor, frac: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """All boxes through one bilinear ``grid_sample`` (any device, float or uint8)."""
    n, _, h, w = x.shape
    top, left, ch, cw = (v.to(torch.float32) for v in frac.unbind(1))
    # sampling positions in grid_sample's [-1, 1] input coordinates (align_corners=False): the
    # crop is axis-aligned, so the grid is an outer sum of one row and one column per image
    steps = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # output pixel centres
    mirror = torch.where(flips, -1.0, 1.0)
    gx = (mirror * cw)[:, None] * steps + (2 * left + cw - 1)[:, None]  # (n, size)
    gy = ch[:, None] * steps + (2 * top + ch - 1)[:, None]
    # keep samples within the crop's first and last pixel centres, as resizing the cut-out crop does
    gx = gx.clamp(min=(2 * left - 1 + 1 / w)[:, None], max=(2 * (left + cw) - 1 - 1 / w)[:, None])
    gy = gy.clamp(min=(2 * top - 1 + 1 / h)[:, None], max=(2 * (top + ch) - 1 - 1 / h)[:, None])
    work = x if x.is_floating_point() else x.float()
    gx, gy = gx.to(device=x.device, dtype=work.dtype), gy.to(device=x.device, dtype=work.dtype)
    grid = torch.stack([gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)], dim=3)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if not x.is_floating_point():
        out = out.round_().clamp_(0, torch.iinfo(x.dtype).max).to(x.dtype)
    return out


@dataclass(frozen=True)
class Compose:
    """Apply ``steps`` in order."""

    steps: tuple[BatchTransform, ...]

    @property
    def takes_geometry(self) -> bool:
        return bool(getattr(self.steps[0], "takes_geometry", False))

    def __call__(self, x: torch.Tensor, **geometry: Any) -> torch.Tensor:
        """``geometry`` (``sizes``, ``size``) goes to the first step, the one that crops whole images."""
        x = self.steps[0](x, **geometry)
        for step in self.steps[1:]:
            x = step(x)
        return x


def _pair(value: Any, name: str, low: float, high: float) -> tuple[float, float]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ConfigError(f"augment {name} must be a pair [low, high], got {value!r}")
    a, b = float(value[0]), float(value[1])
    if not low < a <= b <= high:
        raise ConfigError(f"augment {name} must satisfy {low} < low <= high <= {high}, got {value!r}")
    return a, b


def _pad_crop(opts: Any) -> PadCrop:
    padding = opts.get("padding", 4) if isinstance(opts, Mapping) else opts
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"augment pad_crop needs a padding >= 0 (e.g. {{padding: 4}}), got {opts!r}")
    return PadCrop(padding)


def _random_resized_crop(opts: Any) -> RandomResizedCrop:
    opts = {} if opts is True else opts
    if not isinstance(opts, Mapping) or set(opts) - {"size", "scale", "ratio"}:
        raise ConfigError(f"augment random_resized_crop takes {{size, scale, ratio}}, got {opts!r}")
    size = opts.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ConfigError(f"augment random_resized_crop size must be a positive integer, got {size!r}")
    scale = _pair(opts.get("scale", (0.08, 1.0)), "random_resized_crop.scale", 0.0, 1.0)
    ratio = _pair(opts.get("ratio", (3 / 4, 4 / 3)), "random_resized_crop.ratio", 0.0, math.inf)
    return RandomResizedCrop(size, scale, ratio)


def _horizontal_flip(opts: Any) -> HorizontalFlip:
    p = 0.5 if opts is True else opts
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ConfigError(f"augment horizontal_flip is a probability in [0, 1] (or true for 0.5), got {opts!r}")
    return HorizontalFlip(float(p))


_KNOWN = ("pad_crop", "random_resized_crop", "horizontal_flip")


def build_batch_transform(augment: Mapping[str, Any] | None) -> BatchTransform | None:
    """The batched training transform an ``augment`` config describes; ``None`` or ``{}`` gives ``None``.

    Steps run in a fixed order (pad_crop, random_resized_crop, horizontal_flip) whatever
    the order of the keys.

    Example: ``{random_resized_crop: {scale: [0.08, 1.0]}, horizontal_flip: 0.5}`` (ImageNet-R
    recipes) or ``{pad_crop: {padding: 4}, horizontal_flip: 0.5}`` (CIFAR recipes). A key set
    to ``null`` or ``false`` is off.
    """
    if not augment:
        return None
    if not isinstance(augment, Mapping):
        raise ConfigError(f"augment must be a mapping like {{horizontal_flip: 0.5}}, got {augment!r}")
    unknown = sorted(set(augment) - set(_KNOWN))
    if unknown:
        raise ConfigError(f"unknown augment {unknown}; known: {', '.join(_KNOWN)}")
    on = {key: augment[key] for key in _KNOWN if augment.get(key) not in (None, False)}
    flip = _horizontal_flip(on["horizontal_flip"]) if "horizontal_flip" in on else None
    steps: list[BatchTransform] = []
    if "pad_crop" in on:
        steps.append(_pad_crop(on["pad_crop"]))
    if "random_resized_crop" in on:
        steps.append(_random_resized_crop(on["random_resized_crop"]))
    if flip is not None:
        # the last crop mirrors in the same pass; a flip alone is its own step
        steps[-1:] = [replace(steps[-1], flip=flip.p)] if steps else [flip]
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Compose(tuple(steps))
