"""The CoTTA test-time augmentation that ViDA uses to estimate its teacher's uncertainty, on whole batches.

Provenance: ``get_tta_transforms`` of Wang et al., "Continual Test-Time Domain Adaptation" (CVPR 2022,
github.com/qinenergy/cotta), copied into github.com/Yangsenqiao/vida (``cifar/vida.py``,
``cifar/my_transforms.py``): clip; ColorJitterPro (brightness, contrast, saturation, hue, gamma in a
random order, gamma after clamping to 1e-8); edge padding by half the size; RandomAffine (rotation,
translation, scale; bilinear); GaussianBlur (kernel 5); centre crop back; horizontal flip (p 0.5);
Gaussian noise; clip. As there, applied to a batch tensor, every draw is made once per call and
shared by the whole batch. What differs: torchvision's functional ops on tensors (v2), draws from
torch's generators (the protocol seeds them; the noise is drawn on the batch's device), and the
pad/crop size follows the input size rather than a fixed 384 or 224.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

STRONG = {"brightness": (0.6, 1.4), "contrast": (0.7, 1.3), "saturation": (0.5, 1.5), "hue": (-0.06, 0.06),
          "gamma": (0.7, 1.3), "degrees": 15.0, "scale": (0.9, 1.1), "blur_sigma": (0.001, 0.5)}


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def color_jitter_pro(x: torch.Tensor, ranges: dict = STRONG) -> torch.Tensor:
    """Brightness, contrast, saturation, hue and gamma, each with a random factor, in a random order."""
    for op in torch.randperm(5).tolist():
        if op == 0:
            x = TF.adjust_brightness(x, _uniform(*ranges["brightness"]))
        elif op == 1:
            x = TF.adjust_contrast(x, _uniform(*ranges["contrast"]))
        elif op == 2:
            x = TF.adjust_saturation(x, _uniform(*ranges["saturation"]))
        elif op == 3:
            x = TF.adjust_hue(x, _uniform(*ranges["hue"]))
        else:
            x = TF.adjust_gamma(x.clamp(1e-8, 1.0), _uniform(*ranges["gamma"]))
    return x


def cotta_augment(x: torch.Tensor, noise_std: float = 0.005, ranges: dict = STRONG) -> torch.Tensor:
    """One random CoTTA augmentation of a batch ``(B, C, H, W)`` in [0, 1]."""
    h, w = x.shape[-2:]
    x = color_jitter_pro(x.clamp(0.0, 1.0), ranges)
    pad = h // 2
    x = TF.pad(x, [pad, pad, pad, pad], padding_mode="edge")
    max_dx, max_dy = (w + 2 * pad) / 16, (h + 2 * pad) / 16  # RandomAffine(translate=(1/16, 1/16))
    translate = [round(_uniform(-max_dx, max_dx)), round(_uniform(-max_dy, max_dy))]
    x = TF.affine(x, angle=_uniform(-ranges["degrees"], ranges["degrees"]), translate=translate,
                  scale=_uniform(*ranges["scale"]), shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR)
    sigma = _uniform(*ranges["blur_sigma"])
    x = TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[sigma, sigma])
    x = TF.center_crop(x, [h, w])
    if float(torch.rand(())) < 0.5:
        x = TF.horizontal_flip(x)
    x = x + torch.randn(x.shape, device=x.device) * noise_std
    return x.clamp(0.0, 1.0)
