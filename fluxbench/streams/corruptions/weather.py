"""Weather corruptions: snow, fog, brightness (frost lives in :mod:`.frost`).

Ported from hendrycks/robustness ``make_imagenet_c.py`` / ``make_cifar_c.py``. Differences:

- snow: the snow layer's motion blur is ``imagecorruptions``' kernel instead of
  ImageMagick's (see :func:`.ops.motion_kernels`); the layer is rounded to 8 bits as there.
- fog: the plasma map is ``next_power_of_2(max(H, W))`` wide (256 for 224 px, 32 for
  32 px, as the originals hard-code) and one is drawn per image.
- brightness: ``rgb2hsv``, ``V += c``, ``hsv2rgb`` is computed in closed form (scaling the
  pixel by ``V' / V``; a black pixel becomes grey ``c``), which is the same function.
  One channel: ``x + c``, as imagecorruptions does.
"""

from __future__ import annotations

import torch

from fluxbench.streams.corruptions.ops import (
    motion_filter,
    next_power_of_2,
    plasma_fractal,
    to_gray,
    uniform,
    zoom_crop,
)
from fluxbench.streams.corruptions.params import severity_params
from fluxbench.streams.corruptions.registry import register_corruption


@register_corruption("snow")
def snow(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    loc, scale, zoom, threshold, radius, sigma, keep = severity_params("snow", severity, params)
    b, _, h, w = x.shape
    layer = torch.randn((b, 1, h, w), generator=generator, device=x.device, dtype=x.dtype) * scale + loc
    layer = zoom_crop(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp_(0, 1)
    angles = uniform((b,), -135, -45, generator)
    layer = motion_filter(layer, radius, sigma, angles)
    layer = torch.round(layer.clamp(0, 1) * 255) / 255
    x = keep * x + (1 - keep) * torch.maximum(x, to_gray(x) * 1.5 + 0.5)
    return (x + layer + torch.flip(layer, dims=(-2, -1))).clamp_(0, 1)


@register_corruption("fog")
def fog(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    strength, decay = severity_params("fog", severity, params)
    b, _, h, w = x.shape
    plasma = plasma_fractal(b, next_power_of_2(max(h, w)), decay, generator)[:, None, :h, :w].to(x.dtype)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + strength * plasma) * peak / (peak + strength)).clamp_(0, 1)


@register_corruption("brightness")
def brightness(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    shift = severity_params("brightness", severity, params)
    if x.shape[1] == 1:
        return (x + shift).clamp_(0, 1)
    value = x.amax(dim=1, keepdim=True)
    brighter = (value + shift).clamp(max=1.0)
    ratio = brighter / value.clamp(min=1e-12)
    return torch.where(value > 0, x * ratio, brighter.expand_as(x)).clamp_(0, 1)
