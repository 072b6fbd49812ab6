"""The corruption registry: name -> batched function.

A corruption is registered with ``@register_corruption("name")`` and is called as::

    fn(x: Tensor, severity: int, generator: torch.Generator, params: str) -> Tensor

``x`` is ``(B, C, H, W)`` float in [0, 1] with ``C`` 1 or 3, on the generator's device;
``severity`` is 1..5; ``params`` names the parameter table (``"imagenet"`` or
``"cifar"``, see :mod:`.params`). The result has the shape of ``x`` and lies in [0, 1].
All randomness comes from ``generator``, so a seed fixes the output (per device type).

A deterministic corruption may also register a *pixel path* with ``@register_pixel_path("name")``::

    fn(pixels: np.ndarray, severity: int, params: str) -> np.ndarray

uint8 ``(B, H, W, C)`` in and out, on CPU, giving exactly the bytes of ``to_uint8(fn(to_float(pixels)))``
without the float round trip (which costs more than JPEG or pixelate themselves).
:func:`~fluxbench.streams.corruptions.apply.corrupt_pixels` uses it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import numpy as np
import torch

Corruption = Callable[[torch.Tensor, int, torch.Generator, str], torch.Tensor]
PixelPath = Callable[[np.ndarray, int, str], np.ndarray]

# The standard order of ImageNet-C, CIFAR-10-C and imagecorruptions.get_corruption_names()
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)

# The four held-out corruptions released beside them (ImageNet-C ``extra.tar``, CIFAR-10-C's extra files), meant
# for choosing hyperparameters without touching the 15; never part of the standard stream.
HELD_OUT_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

_CORRUPTIONS: dict[str, Corruption] = {}
_PIXEL_PATHS: dict[str, PixelPath] = {}


def register_corruption(name: str) -> Callable[[Corruption], Corruption]:
    def wrap(fn: Corruption) -> Corruption:
        if name in _CORRUPTIONS and _CORRUPTIONS[name] is not fn:
            raise ValueError(f"corruption {name!r} is registered twice")
        _CORRUPTIONS[name] = fn
        return fn

    return wrap


def register_pixel_path(name: str) -> Callable[[PixelPath], PixelPath]:
    def wrap(fn: PixelPath) -> PixelPath:
        _PIXEL_PATHS[name] = fn
        return fn

    return wrap


def get_pixel_path(name: str) -> PixelPath | None:
    """The uint8 CPU path of ``name``, or None (then the float path is used)."""
    return _PIXEL_PATHS.get(name)


def list_corruptions(pattern: str = "*") -> list[str]:
    """Registered names matching ``pattern``: the standard 15 in their standard order, the 4 held-out ones, then any
    others sorted."""
    known = CORRUPTIONS + HELD_OUT_CORRUPTIONS
    names = [n for n in known if n in _CORRUPTIONS] + sorted(set(_CORRUPTIONS) - set(known))
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def get_corruption(name: str) -> Corruption:
    from fluxbench.errors import ConfigError

    if name not in _CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(list_corruptions())}")
    return _CORRUPTIONS[name]
