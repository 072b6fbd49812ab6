"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper) and the held-out speckle.

Ported from hendrycks/robustness ``make_imagenet_c.py`` / ``make_cifar_c.py``; impulse
noise follows skimage's ``random_noise(mode="s&p")``: every value (each channel on its
own) is hit with probability ``amount``, half of the hits to 1 and half to 0.
"""

from __future__ import annotations

import torch

from fluxbench.streams.corruptions.params import severity_params
from fluxbench.streams.corruptions.registry import register_corruption


@register_corruption("gaussian_noise")
def gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    sigma = severity_params("gaussian_noise", severity, params)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + sigma * noise).clamp_(0, 1)


@register_corruption("shot_noise")
def shot_noise(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    rate = severity_params("shot_noise", severity, params)
    return (torch.poisson(x * rate, generator=generator) / rate).clamp_(0, 1)


@register_corruption("impulse_noise")
def impulse_noise(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    amount = severity_params("impulse_noise", severity, params)
    hit = torch.rand(x.shape, generator=generator, device=x.device) <= amount
    salt = torch.rand(x.shape, generator=generator, device=x.device) <= 0.5
    return torch.where(hit, salt.to(x.dtype), x)


@register_corruption("speckle_noise")
def speckle_noise(x: torch.Tensor, severity: int, generator: torch.Generator, params: str) -> torch.Tensor:
    """Held out: multiplicative noise, ``x + x * N(0, c)`` (one draw per value, as gaussian_noise draws)."""
    sigma = severity_params("speckle_noise", severity, params)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + x * sigma * noise).clamp_(0, 1)
